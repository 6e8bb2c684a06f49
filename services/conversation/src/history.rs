//! A thread's history: appends and pages of messages.

use boardroom_runtime::status::Violations;
use uuid::Uuid;

use crate::conversations::{Conversations, check_request_id, check_text};
use crate::domain::{Direction, Message, NewMessage, Page, Role};
use crate::error::ConversationError;
use crate::page;
use crate::store;

impl Conversations {
    /// Appends a user or system message.
    pub async fn append(
        &self,
        thread_id: Uuid,
        message: NewMessage,
        request_id: Option<String>,
    ) -> Result<Message, ConversationError> {
        let mut v = Violations::default();
        if !matches!(message.role, Role::User | Role::System) {
            v.add("role", "must be ROLE_USER or ROLE_SYSTEM");
        }
        check_text(
            &mut v,
            "content",
            &message.content,
            self.limits.max_message_bytes,
            true,
        );
        check_text(&mut v, "author", &message.author, 128, false);
        check_request_id(&mut v, &request_id);
        v.finish(())?;
        self.writable_thread(thread_id).await?;
        self.store.append(thread_id, message, request_id).await
    }

    /// A page of a thread's messages.
    pub async fn list_messages(
        &self,
        thread_id: Uuid,
        direction: Direction,
        page_size: i32,
        token: &str,
    ) -> Result<Page<Message>, ConversationError> {
        let size = self.page_size(page_size)?;
        let list = page::fingerprint(&[
            thread_id.as_bytes(),
            if direction == Direction::Forward {
                b"f"
            } else {
                b"b"
            },
        ]);
        let from = page::decode(token, list)?;
        self.directory.thread(thread_id).await?;
        let mut items = self
            .store
            .list_messages(thread_id, direction, from, size + 1, store::Read::Replica)
            .await?;
        let next_page_token = (items.len() as u64 > size).then(|| {
            items.truncate(size as usize);
            page::encode(list, items.last().map_or(0, |m| m.seq))
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }
}
