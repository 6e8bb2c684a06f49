//! The gRPC skin of the conversation service: validate, convert, call the domain.

use std::pin::Pin;

use boardroom_proto::conversation::v1 as pb;
use boardroom_proto::conversation::v1::conversation_service_server::ConversationService;
use boardroom_runtime::gather::Gather;
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::conversations::Conversations;
use crate::conversions::{self as conv, request_id, uuid_field};
use crate::domain::{Direction, NewMessage, TurnRequest};

/// Implements `boardroom.conversation.v1.ConversationService`.
#[derive(Debug, Clone)]
pub struct ConversationGrpc {
    domain: Conversations,
}

impl ConversationGrpc {
    /// Serves `domain`.
    pub fn new(domain: Conversations) -> Self {
        Self { domain }
    }
}

type TurnStream = Pin<Box<dyn Stream<Item = Result<pb::RunTurnResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConversationService for ConversationGrpc {
    async fn append_message(
        &self,
        request: Request<pb::AppendMessageRequest>,
    ) -> Result<Response<pb::AppendMessageResponse>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let role = conv::role_from(r.role)?;
        let message = self
            .domain
            .append(
                thread_id,
                NewMessage {
                    role,
                    author: r.author,
                    content: r.content,
                },
                request_id(r.request_id),
            )
            .await?;
        Ok(Response::new(pb::AppendMessageResponse {
            message: Some(conv::message_to(&message)),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let direction = match pb::Direction::try_from(r.direction) {
            Ok(pb::Direction::Backward) => Direction::Backward,
            Ok(pb::Direction::Forward | pb::Direction::Unspecified) => Direction::Forward,
            Err(_) => {
                return Err(Status::from(crate::error::ConversationError::invalid(
                    "direction",
                    "is not a Direction",
                )));
            }
        };
        let page = self
            .domain
            .list_messages(thread_id, direction, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.items.iter().map(conv::message_to).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type RunTurnStream = TurnStream;

    async fn run_turn(
        &self,
        request: Request<pb::RunTurnRequest>,
    ) -> Result<Response<Self::RunTurnStream>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let events = self
            .domain
            .run_turn(TurnRequest {
                thread_id,
                content: r.content,
                author: r.author,
                request_id: request_id(r.request_id),
                advisors: r.advisors,
                double_text: conv::double_text_from(r.double_text)?,
                on_disconnect: conv::on_disconnect_from(r.on_disconnect)?,
                deliberation: conv::mode_from(r.deliberation)?,
                debate_rounds: (r.debate_rounds > 0).then_some(r.debate_rounds),
            })
            .await?;
        let stream = ReceiverStream::new(events).map(|(i, e)| Ok(conv::event_to(i, e)));
        Ok(Response::new(Box::pin(Gather::new(stream))))
    }

    type JoinTurnStream = Pin<Box<dyn Stream<Item = Result<pb::JoinTurnResponse, Status>> + Send>>;

    async fn join_turn(
        &self,
        request: Request<pb::JoinTurnRequest>,
    ) -> Result<Response<Self::JoinTurnStream>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let turn_id = uuid_field("turn_id", &r.turn_id)?;
        let events = self
            .domain
            .join_turn(thread_id, turn_id, r.after_event)
            .await?;
        let stream = ReceiverStream::new(events).map(|item| match item {
            Ok((i, e)) => Ok(pb::JoinTurnResponse {
                event: Some(conv::event_to(i, e)),
            }),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(Gather::new(stream))))
    }

    async fn get_state(
        &self,
        request: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        let thread_id = uuid_field("thread_id", &request.into_inner().thread_id)?;
        let view = self.domain.get_state(thread_id).await?;
        Ok(Response::new(conv::state_view_to(&view)))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let page = self
            .domain
            .list_checkpoints(thread_id, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: page.items.iter().map(conv::checkpoint_to).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn fork_thread(
        &self,
        request: Request<pb::ForkThreadRequest>,
    ) -> Result<Response<pb::ForkThreadResponse>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let (target, state) = self
            .domain
            .fork(thread_id, r.version, r.title, request_id(r.request_id))
            .await?;
        Ok(Response::new(pb::ForkThreadResponse {
            thread_id: target.to_string(),
            state: Some(conv::state_to(target, &state)),
        }))
    }

    async fn cancel_turn(
        &self,
        request: Request<pb::CancelTurnRequest>,
    ) -> Result<Response<pb::CancelTurnResponse>, Status> {
        let r = request.into_inner();
        let thread_id = uuid_field("thread_id", &r.thread_id)?;
        let turn_id = if r.turn_id.is_empty() {
            None
        } else {
            Some(uuid_field("turn_id", &r.turn_id)?)
        };
        Ok(Response::new(pb::CancelTurnResponse {
            cancelled: self.domain.cancel(thread_id, turn_id).await?,
        }))
    }
    async fn list_memories(
        &self,
        request: Request<pb::ListMemoriesRequest>,
    ) -> Result<Response<pb::ListMemoriesResponse>, Status> {
        let r = request.into_inner();
        let key = conv::memory_key(r.owner_id, &r.boardroom_id)?;
        let page = self
            .domain
            .list_memories(key, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListMemoriesResponse {
            memories: page.items.iter().map(conv::memory_to).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn delete_memory(
        &self,
        request: Request<pb::DeleteMemoryRequest>,
    ) -> Result<Response<pb::DeleteMemoryResponse>, Status> {
        let r = request.into_inner();
        let (key, id) = conv::memory_fact(r.owner_id, &r.boardroom_id, &r.id)?;
        Ok(Response::new(pb::DeleteMemoryResponse {
            deleted: self.domain.delete_memory(key, id).await?,
        }))
    }

    async fn forget_boardroom(
        &self,
        request: Request<pb::ForgetBoardroomRequest>,
    ) -> Result<Response<pb::ForgetBoardroomResponse>, Status> {
        let r = request.into_inner();
        let key = conv::memory_key(r.owner_id, &r.boardroom_id)?;
        Ok(Response::new(pb::ForgetBoardroomResponse {
            deleted_count: self.domain.forget_boardroom(key).await?,
        }))
    }
}
