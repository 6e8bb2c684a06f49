//! A thread's state and checkpoints: the current state, pages of checkpoints, forks.

use boardroom_runtime::status::Violations;
use uuid::Uuid;

use crate::conversations::{Conversations, check_request_id, check_text};
use crate::domain::{Checkpoint, ConversationState, Page, StateView};
use crate::error::ConversationError;
use crate::page;
use crate::store;

impl Conversations {
    /// The thread's current state, last seq and running turn.
    pub async fn get_state(&self, thread_id: Uuid) -> Result<StateView, ConversationError> {
        // A replica's view (the caller's token keeps its own writes in it).
        let head = self
            .store
            .head_from(thread_id, store::Read::Replica)
            .await?;
        if head.is_none() {
            // Never written: it exists only if the session service knows it.
            self.directory.thread(thread_id).await?;
        }
        let head = head.unwrap_or(store::Head::EMPTY);
        let state = self.state(thread_id, head.state_version).await?;
        Ok(StateView {
            thread_id,
            state: (*state).clone(),
            last_seq: head.last_seq,
            running_turn: head.running_turn_now(),
        })
    }

    /// A page of the thread's retained checkpoints, newest first.
    pub async fn list_checkpoints(
        &self,
        thread_id: Uuid,
        page_size: i32,
        token: &str,
    ) -> Result<Page<Checkpoint>, ConversationError> {
        let size = self.page_size(page_size)?;
        let list = page::fingerprint(&[thread_id.as_bytes(), b"checkpoints"]);
        let before = page::decode(token, list)?;
        self.directory.thread(thread_id).await?;
        let mut items = self
            .store
            .list_checkpoints(thread_id, before, size + 1)
            .await?;
        let next_page_token = (items.len() as u64 > size).then(|| {
            items.truncate(size as usize);
            page::encode(list, items.last().map_or(0, |c| c.version))
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Forks a thread from one of its checkpoints into a new breakout thread of its session.
    pub async fn fork(
        &self,
        thread_id: Uuid,
        version: i64,
        title: String,
        request_id: Option<String>,
    ) -> Result<(Uuid, ConversationState), ConversationError> {
        let mut v = Violations::default();
        if version < 0 {
            v.add("version", "must be >= 0 (0: the latest)");
        }
        check_text(&mut v, "title", &title, 200, false);
        check_request_id(&mut v, &request_id);
        v.finish(())?;
        let source = self.directory.thread(thread_id).await?;
        if version > 0
            && self
                .store
                .list_checkpoints(thread_id, Some(version + 1), 1)
                .await?
                .first()
                .is_none_or(|c| c.version != version)
        {
            return Err(ConversationError::not_found(
                "checkpoint",
                format!("{thread_id}@{version}"),
            ));
        }
        let title = if title.trim().is_empty() {
            format!("Fork of {thread_id} at version {version}")
        } else {
            title
        };
        let request = request_id
            .map(|r| format!("fork:{r}"))
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        let target = self
            .directory
            .create_thread(source.session_id, title, request)
            .await?;
        let state = self.store.fork(thread_id, version, target).await?;
        self.remember(target, &state).await;
        Ok((target, state))
    }
}
