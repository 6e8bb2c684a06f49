//! Input rules of the session domain, reported per field.

use std::collections::HashSet;

use crate::domain::{Advisor, BoardroomUpdate, NewBoardroom, NewSession, NewThread};
use boardroom_runtime::status::Violations;

use crate::error::SessionError;

/// Bounds on input sizes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_advisors: usize,
}

const MAX_ID: usize = 128;
const MAX_NAME: usize = 200;
const MAX_ADVISOR_NAME: usize = 100;
const MAX_PROMPT: usize = 16 * 1024;

/// `Ok` when the request's collector (the runtime's [`Violations`]) found nothing.
pub trait Verdict {
    /// The collected problems as the domain's error.
    fn into_result(self) -> Result<(), SessionError>;
}

impl Verdict for Violations {
    fn into_result(self) -> Result<(), SessionError> {
        self.finish(()).map_err(SessionError::from)
    }
}

fn request_id(v: &mut Violations, request_id: Option<&str>) {
    if let Some(id) = request_id {
        v.bounded("request_id", id, MAX_ID);
    }
}

fn advisors(v: &mut Violations, field: &str, advisors: &[Advisor], limits: &Limits) {
    if advisors.is_empty() {
        v.add(field, "must name at least one advisor");
    } else if advisors.len() > limits.max_advisors {
        v.add(
            field,
            format!("must have at most {} advisors", limits.max_advisors),
        );
    }
    let mut names = HashSet::new();
    for (i, a) in advisors.iter().enumerate() {
        v.required(&format!("{field}[{i}].name"), &a.name, MAX_ADVISOR_NAME);
        v.bounded(&format!("{field}[{i}].role"), &a.role, MAX_NAME);
        v.bounded(
            &format!("{field}[{i}].system_prompt"),
            &a.system_prompt,
            MAX_PROMPT,
        );
        v.required(&format!("{field}[{i}].model"), &a.model, MAX_ID);
        if !a.name.trim().is_empty() && !names.insert(a.name.trim().to_lowercase()) {
            v.add(
                format!("{field}[{i}].name"),
                "duplicates another advisor's name",
            );
        }
    }
}

impl NewBoardroom {
    /// Checks every field.
    pub fn validate(&self, limits: &Limits) -> Result<(), SessionError> {
        let mut v = Violations::default();
        v.required("owner_id", &self.owner_id, MAX_ID);
        v.required("name", &self.name, MAX_NAME);
        advisors(&mut v, "advisors", &self.advisors, limits);
        request_id(&mut v, self.request_id.as_deref());
        v.into_result()
    }
}

impl BoardroomUpdate {
    /// Checks the fields being changed.
    pub fn validate(&self, limits: &Limits) -> Result<(), SessionError> {
        let mut v = Violations::default();
        if let Some(name) = &self.name {
            v.required("boardroom.name", name, MAX_NAME);
        }
        if let Some(list) = &self.advisors {
            advisors(&mut v, "boardroom.advisors", list, limits);
        }
        if self.expected_version.is_some_and(|e| e < 1) {
            v.add(
                "expected_version",
                "must be positive (or 0 to skip the check)",
            );
        }
        v.into_result()
    }
}

impl NewSession {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), SessionError> {
        let mut v = Violations::default();
        v.required("user_id", &self.user_id, MAX_ID);
        v.bounded("title", &self.title, MAX_NAME);
        request_id(&mut v, self.request_id.as_deref());
        v.into_result()
    }
}

impl NewThread {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), SessionError> {
        let mut v = Violations::default();
        v.bounded("title", &self.title, MAX_NAME);
        request_id(&mut v, self.request_id.as_deref());
        v.into_result()
    }
}

/// Checks a list's owner key (`owner_id`, `user_id`).
pub fn list_key(field: &str, value: &str) -> Result<(), SessionError> {
    let mut v = Violations::default();
    v.required(field, value, MAX_ID);
    v.into_result()
}
