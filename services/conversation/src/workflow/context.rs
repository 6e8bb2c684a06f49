//! An advisor's context window: its system prompt, the rolling summary, the facts recalled
//! from the boardroom's memory, and as many of the most recent messages as fit the token
//! budget, then the user's new message.

use crate::domain::{Advisor, ConversationState, Message, Role, estimate_tokens};
use crate::ports::{ChatMessage, ChatRole};

/// The messages one advisor is called with.
pub fn advisor_context(
    advisor: &Advisor,
    state: &ConversationState,
    memory: Option<&str>,
    recent: &[Message],
    user_message: &str,
    budget_tokens: u32,
) -> Vec<ChatMessage> {
    let mut system = format!(
        "{}\n\nYou are {}, {} on this board. Answer the user's latest message from your role.",
        advisor.system_prompt, advisor.name, advisor.role
    );
    if let Some(memory) = state.advisors.get(&advisor.name) {
        system.push_str("\nYour previous answer, in short: ");
        system.push_str(&memory.last_answer);
    }
    let mut messages = vec![ChatMessage::text(ChatRole::System, system)];
    if !state.summary.is_empty() {
        messages.push(ChatMessage::text(
            ChatRole::System,
            format!("Summary of the discussion so far: {}", state.summary),
        ));
    }
    if let Some(memory) = memory {
        messages.push(ChatMessage::text(ChatRole::System, memory));
    }
    let fixed: u32 = messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum::<u32>()
        + estimate_tokens(user_message);
    let mut left = budget_tokens.saturating_sub(fixed);
    // Newest first until the budget is spent, then back in order.
    let mut kept = Vec::new();
    for message in recent.iter().rev() {
        let chat = history_message(advisor, message);
        let cost = estimate_tokens(&chat.content);
        if cost > left {
            break;
        }
        left -= cost;
        kept.push(chat);
    }
    kept.reverse();
    messages.extend(kept);
    messages.push(ChatMessage::text(ChatRole::User, user_message));
    messages
}

/// A stored message as this advisor sees it: its own answers as the assistant's, everyone
/// else's as attributed user-side text.
fn history_message(advisor: &Advisor, message: &Message) -> ChatMessage {
    match message.role {
        Role::Advisor if message.author == advisor.name => {
            ChatMessage::text(ChatRole::Assistant, message.content.clone())
        }
        Role::User => ChatMessage::text(ChatRole::User, message.content.clone()),
        Role::System => ChatMessage::text(ChatRole::System, message.content.clone()),
        Role::Advisor | Role::Moderator | Role::Tool => ChatMessage::text(
            ChatRole::User,
            format!(
                "[{} {}] {}",
                message.role.as_str(),
                message.author,
                message.content
            ),
        ),
    }
}

/// The moderator's call: every answer of the turn, attributed, and what the deliberation
/// adds (REVIEW's ranking, DEBATE's rounds).
pub fn moderator_context(
    user_message: &str,
    answers: &[(String, String)],
    note: Option<&str>,
) -> Vec<ChatMessage> {
    let mut prompt = format!("The user asked: {user_message}\n\nThe board answered:\n");
    for (advisor, answer) in answers {
        prompt.push_str(&format!("\n[{advisor}] {answer}\n"));
    }
    if let Some(note) = note {
        prompt.push('\n');
        prompt.push_str(note);
        prompt.push('\n');
    }
    vec![
        ChatMessage::text(
            ChatRole::System,
            "You are the moderator of an advisory board. Synthesise the advisors' answers into \
             one recommendation: where they agree, where they differ, and what to do next.",
        ),
        ChatMessage::text(ChatRole::User, prompt),
    ]
}

/// The summariser's call: the summary so far and the messages to fold into it.
pub fn summary_context(summary: &str, messages: &[Message]) -> Vec<ChatMessage> {
    let mut prompt = String::new();
    if !summary.is_empty() {
        prompt.push_str("Summary so far: ");
        prompt.push_str(summary);
        prompt.push_str("\n\n");
    }
    prompt.push_str("New messages:\n");
    for m in messages {
        prompt.push_str(&format!(
            "[{} {}] {}\n",
            m.role.as_str(),
            m.author,
            m.content
        ));
    }
    vec![
        ChatMessage::text(
            ChatRole::System,
            "Fold the new messages into the summary of this advisory board's discussion. Keep \
             decisions, figures, open questions and who said what. Answer with the summary only.",
        ),
        ChatMessage::text(ChatRole::User, prompt),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64, role: Role, author: &str, content: &str) -> Message {
        Message {
            thread_id: uuid::Uuid::nil(),
            seq,
            role,
            author: author.into(),
            content: content.into(),
            turn_id: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn keeps_the_newest_messages_that_fit_and_attributes_others() {
        let advisor = Advisor {
            name: "cfo".into(),
            role: "finance".into(),
            system_prompt: "Be careful with money.".into(),
            model: "mock".into(),
        };
        let recent: Vec<Message> = (1..=50)
            .map(|i| {
                let author = if i % 2 == 0 { "cfo" } else { "cto" };
                message(i, Role::Advisor, author, &"word ".repeat(40))
            })
            .collect();
        let state = ConversationState::default();
        let context = advisor_context(&advisor, &state, None, &recent, "next?", 400);
        let total: u32 = context.iter().map(|m| estimate_tokens(&m.content)).sum();
        assert!(total <= 400, "{total} tokens");
        assert!(context.len() > 3 && context.len() < 52);
        assert_eq!(context.last().map(|m| m.content.as_str()), Some("next?"));
        // The last history message is the newest (seq 50, cfo's own: the assistant's).
        let newest = &context[context.len() - 2];
        assert_eq!(newest.role, ChatRole::Assistant);
        let other = &context[context.len() - 3];
        assert!(other.content.starts_with("[advisor cto]"));
        // Recalled facts come after the system prompt and count in the budget: fewer
        // history messages fit.
        let memory = "What the board remembers:\n- Our runway is 14 months.".to_owned()
            + &" More.".repeat(60);
        let with = advisor_context(&advisor, &state, Some(&memory), &recent, "next?", 400);
        assert_eq!(with[1].role, ChatRole::System);
        assert_eq!(with[1].content, memory);
        let total: u32 = with.iter().map(|m| estimate_tokens(&m.content)).sum();
        assert!(total <= 400, "{total} tokens");
        assert!(
            with.len() < context.len() + 1,
            "{} vs {}",
            with.len(),
            context.len()
        );
    }
}
