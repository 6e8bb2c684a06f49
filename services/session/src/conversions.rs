//! Proto ↔ domain conversion, and the one mapping of [`SessionError`] to a gRPC status.

use boardroom_proto::session::v1 as pb;
use chrono::{DateTime, Utc};
use tonic::Status;
use uuid::Uuid;

use crate::domain::{
    Advisor, Boardroom, BoardroomUpdate, Deliberation, DoubleText, MAX_DEBATE_ROUNDS, NewBoardroom,
    NewSession, NewThread, PageRequest, Session, Thread, ThreadFilter, ThreadStatus, ThreadType,
};
use crate::error::SessionError;
use boardroom_runtime::status::Violations;

use crate::validate::Verdict;

impl From<SessionError> for Status {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Invalid(violations) => violations.to_status(),
            SessionError::NotFound { .. } => Status::not_found(err.to_string()),
            SessionError::VersionMismatch { .. } => Status::aborted(err.to_string()),
            SessionError::FailedPrecondition(message) => Status::failed_precondition(message),
            SessionError::Unavailable(message) => {
                tracing::warn!(error = %message, "database unavailable");
                boardroom_runtime::status::unavailable("database unavailable", 1)
            }
            // Overload refuses many calls: counted (db_client_refused_total), not logged.
            SessionError::Overloaded => boardroom_runtime::status::unavailable(err.to_string(), 1),
            SessionError::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Parses a required UUID field.
pub fn parse_id(v: &mut Violations, field: &str, value: &str) -> Uuid {
    if value.is_empty() {
        v.add(field, "must not be empty");
        return Uuid::nil();
    }
    match Uuid::parse_str(value) {
        Ok(id) => id,
        Err(_) => {
            v.add(field, "must be a UUID");
            Uuid::nil()
        }
    }
}

/// A single required id, as a domain error when malformed.
pub fn id(field: &str, value: &str) -> Result<Uuid, SessionError> {
    let mut v = Violations::default();
    let id = parse_id(&mut v, field, value);
    v.into_result().map(|()| id)
}

/// Bounds a request's page size: 0 means the default; above the maximum is an error.
pub fn page_request(
    page_size: i32,
    page_token: String,
    default: u32,
    max: u32,
) -> Result<PageRequest, SessionError> {
    let size = match page_size {
        0 => default,
        n if n < 0 => return Err(SessionError::invalid("page_size", "must not be negative")),
        n if n as u32 > max => {
            return Err(SessionError::invalid(
                "page_size",
                format!("must be at most {max}"),
            ));
        }
        n => n as u32,
    };
    Ok(PageRequest {
        size,
        token: (!page_token.is_empty()).then_some(page_token),
    })
}

fn request_id(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn advisors_from(list: Vec<pb::Advisor>) -> Vec<Advisor> {
    list.into_iter()
        .map(|a| Advisor {
            name: a.name,
            role: a.role,
            system_prompt: a.system_prompt,
            model: a.model,
        })
        .collect()
}

/// A boardroom's double-text policy (`field` names it in errors).
pub fn double_text_from(field: &str, value: i32) -> Result<DoubleText, SessionError> {
    match pb::DoubleTextPolicy::try_from(value) {
        Ok(pb::DoubleTextPolicy::Unspecified) => Ok(DoubleText::Unspecified),
        Ok(pb::DoubleTextPolicy::Reject) => Ok(DoubleText::Reject),
        Ok(pb::DoubleTextPolicy::Enqueue) => Ok(DoubleText::Enqueue),
        Ok(pb::DoubleTextPolicy::Interrupt) => Ok(DoubleText::Interrupt),
        Err(_) => Err(SessionError::invalid(field, "is not a DoubleTextPolicy")),
    }
}

fn double_text_to(policy: DoubleText) -> pb::DoubleTextPolicy {
    match policy {
        DoubleText::Unspecified => pb::DoubleTextPolicy::Unspecified,
        DoubleText::Reject => pb::DoubleTextPolicy::Reject,
        DoubleText::Enqueue => pb::DoubleTextPolicy::Enqueue,
        DoubleText::Interrupt => pb::DoubleTextPolicy::Interrupt,
    }
}

/// A boardroom's deliberation mode (`field` names it in errors).
pub fn deliberation_from(field: &str, value: i32) -> Result<Deliberation, SessionError> {
    match pb::DeliberationMode::try_from(value) {
        Ok(pb::DeliberationMode::Unspecified) => Ok(Deliberation::Unspecified),
        Ok(pb::DeliberationMode::Panel) => Ok(Deliberation::Panel),
        Ok(pb::DeliberationMode::Review) => Ok(Deliberation::Review),
        Ok(pb::DeliberationMode::Debate) => Ok(Deliberation::Debate),
        Err(_) => Err(SessionError::invalid(field, "is not a DeliberationMode")),
    }
}

fn deliberation_to(mode: Deliberation) -> pb::DeliberationMode {
    match mode {
        Deliberation::Unspecified => pb::DeliberationMode::Unspecified,
        Deliberation::Panel => pb::DeliberationMode::Panel,
        Deliberation::Review => pb::DeliberationMode::Review,
        Deliberation::Debate => pb::DeliberationMode::Debate,
    }
}

/// The value of a field's check, or `None` with its violations added to `v`.
fn collected<T>(v: &mut Violations, checked: Result<T, SessionError>) -> Option<T> {
    match checked {
        Ok(value) => Some(value),
        Err(SessionError::Invalid(more)) => {
            v.extend(more);
            None
        }
        Err(_) => None,
    }
}

/// DEBATE's rounds (`field` names it in errors): 0 (the default) up to the bound.
fn debate_rounds_from(v: &mut Violations, field: &str, rounds: u32) -> u32 {
    if rounds > MAX_DEBATE_ROUNDS {
        v.add(
            field,
            format!("must be in 0..={MAX_DEBATE_ROUNDS} (0: the service's default)"),
        );
    }
    rounds
}

/// CreateBoardroom; the fields' own rules are checked by the store.
pub fn new_boardroom(r: pb::CreateBoardroomRequest) -> Result<NewBoardroom, SessionError> {
    let mut v = Violations::default();
    let debate_rounds = debate_rounds_from(&mut v, "debate_rounds", r.debate_rounds);
    let deliberation =
        collected(&mut v, deliberation_from("deliberation", r.deliberation)).unwrap_or_default();
    v.into_result()?;
    Ok(NewBoardroom {
        double_text: double_text_from("double_text", r.double_text)?,
        deliberation,
        debate_rounds,
        owner_id: r.owner_id,
        name: r.name,
        advisors: advisors_from(r.advisors),
        request_id: request_id(r.request_id),
    })
}

/// UpdateBoardroom: the mask names the fields to change; unknown paths are errors.
pub fn boardroom_update(r: pb::UpdateBoardroomRequest) -> Result<BoardroomUpdate, SessionError> {
    let mut v = Violations::default();
    let Some(boardroom) = r.boardroom else {
        return Err(SessionError::invalid("boardroom", "is required"));
    };
    let id = parse_id(&mut v, "boardroom.id", &boardroom.id);
    let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        v.add(
            "update_mask",
            "must name at least one of: name, advisors, double_text, deliberation, debate_rounds",
        );
    }
    let (mut name, mut advisors, mut double_text) = (None, None, None);
    let (mut deliberation, mut debate_rounds) = (None, None);
    for path in &paths {
        match path.as_str() {
            "name" => name = Some(boardroom.name.clone()),
            "advisors" => advisors = Some(advisors_from(boardroom.advisors.clone())),
            "double_text" => {
                double_text = collected(
                    &mut v,
                    double_text_from("boardroom.double_text", boardroom.double_text),
                );
            }
            "deliberation" => {
                deliberation = collected(
                    &mut v,
                    deliberation_from("boardroom.deliberation", boardroom.deliberation),
                );
            }
            "debate_rounds" => {
                debate_rounds = Some(debate_rounds_from(
                    &mut v,
                    "boardroom.debate_rounds",
                    boardroom.debate_rounds,
                ));
            }
            other => v.add(
                "update_mask",
                format!("unknown or immutable field {other:?}"),
            ),
        }
    }
    if r.expected_version < 0 {
        v.add("expected_version", "must not be negative");
    }
    v.into_result()?;
    Ok(BoardroomUpdate {
        id,
        name,
        advisors,
        double_text,
        deliberation,
        debate_rounds,
        expected_version: (r.expected_version > 0).then_some(r.expected_version),
    })
}

pub fn new_session(r: pb::CreateSessionRequest) -> Result<NewSession, SessionError> {
    let mut v = Violations::default();
    let boardroom_id = parse_id(&mut v, "boardroom_id", &r.boardroom_id);
    let input = NewSession {
        boardroom_id,
        user_id: r.user_id,
        title: r.title,
        request_id: request_id(r.request_id),
    };
    if let Err(SessionError::Invalid(more)) = input.validate() {
        v.extend(more);
    }
    v.into_result().map(|()| input)
}

fn thread_type_from(value: i32) -> Result<Option<ThreadType>, ()> {
    match pb::ThreadType::try_from(value) {
        Ok(pb::ThreadType::Unspecified) => Ok(None),
        Ok(pb::ThreadType::Main) => Ok(Some(ThreadType::Main)),
        Ok(pb::ThreadType::Breakout) => Ok(Some(ThreadType::Breakout)),
        Ok(pb::ThreadType::Private) => Ok(Some(ThreadType::Private)),
        Err(_) => Err(()),
    }
}

fn thread_status_from(value: i32) -> Result<Option<ThreadStatus>, ()> {
    match pb::ThreadStatus::try_from(value) {
        Ok(pb::ThreadStatus::Unspecified) => Ok(None),
        Ok(pb::ThreadStatus::Open) => Ok(Some(ThreadStatus::Open)),
        Ok(pb::ThreadStatus::Paused) => Ok(Some(ThreadStatus::Paused)),
        Ok(pb::ThreadStatus::Closed) => Ok(Some(ThreadStatus::Closed)),
        Err(_) => Err(()),
    }
}

pub fn new_thread(r: pb::CreateThreadRequest) -> Result<NewThread, SessionError> {
    let mut v = Violations::default();
    let session_id = parse_id(&mut v, "session_id", &r.session_id);
    let thread_type = match thread_type_from(r.thread_type) {
        Ok(Some(t)) => t,
        Ok(None) => {
            v.add("thread_type", "is required");
            ThreadType::Main
        }
        Err(()) => {
            v.add("thread_type", "is not a known thread type");
            ThreadType::Main
        }
    };
    let input = NewThread {
        session_id,
        thread_type,
        title: r.title,
        request_id: request_id(r.request_id),
    };
    if let Err(SessionError::Invalid(more)) = input.validate() {
        v.extend(more);
    }
    v.into_result().map(|()| input)
}

pub fn thread_filter(r: &pb::ListThreadsRequest) -> Result<ThreadFilter, SessionError> {
    let mut v = Violations::default();
    let session_id = parse_id(&mut v, "session_id", &r.session_id);
    let thread_type = thread_type_from(r.thread_type).unwrap_or_else(|()| {
        v.add("thread_type", "is not a known thread type");
        None
    });
    let status = thread_status_from(r.status).unwrap_or_else(|()| {
        v.add("status", "is not a known thread status");
        None
    });
    v.into_result().map(|()| ThreadFilter {
        session_id,
        thread_type,
        status,
    })
}

/// UpdateThreadStatus: a required, known status.
pub fn required_status(value: i32) -> Result<ThreadStatus, SessionError> {
    match thread_status_from(value) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(SessionError::invalid("status", "is required")),
        Err(()) => Err(SessionError::invalid(
            "status",
            "is not a known thread status",
        )),
    }
}

pub fn boardroom_to(b: &Boardroom) -> pb::Boardroom {
    pb::Boardroom {
        id: b.id.to_string(),
        owner_id: b.owner_id.clone(),
        name: b.name.clone(),
        advisors: b
            .advisors
            .iter()
            .map(|a| pb::Advisor {
                name: a.name.clone(),
                role: a.role.clone(),
                system_prompt: a.system_prompt.clone(),
                model: a.model.clone(),
            })
            .collect(),
        version: b.version,
        double_text: double_text_to(b.double_text) as i32,
        deliberation: deliberation_to(b.deliberation) as i32,
        debate_rounds: b.debate_rounds,
        create_time: Some(timestamp(b.created_at)),
        update_time: Some(timestamp(b.updated_at)),
    }
}

pub fn session_to(s: &Session) -> pb::Session {
    pb::Session {
        id: s.id.to_string(),
        boardroom_id: s.boardroom_id.to_string(),
        user_id: s.user_id.clone(),
        title: s.title.clone(),
        active: s.active,
        create_time: Some(timestamp(s.created_at)),
        end_time: s.ended_at.map(timestamp),
    }
}

pub fn thread_to(t: &Thread) -> pb::Thread {
    let thread_type = match t.thread_type {
        ThreadType::Main => pb::ThreadType::Main,
        ThreadType::Breakout => pb::ThreadType::Breakout,
        ThreadType::Private => pb::ThreadType::Private,
    };
    let status = match t.status {
        ThreadStatus::Open => pb::ThreadStatus::Open,
        ThreadStatus::Paused => pb::ThreadStatus::Paused,
        ThreadStatus::Closed => pb::ThreadStatus::Closed,
    };
    pb::Thread {
        id: t.id.to_string(),
        session_id: t.session_id.to_string(),
        thread_type: thread_type.into(),
        status: status.into(),
        title: t.title.clone(),
        create_time: Some(timestamp(t.created_at)),
        update_time: Some(timestamp(t.updated_at)),
    }
}
