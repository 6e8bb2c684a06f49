//! An in-memory model port for unit tests of the turn graph: each model alias answers from a
//! script, every call is recorded, and open streams are counted (so a test sees a cancelled
//! turn's calls go away).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::BoxFuture;

use crate::domain::{FailureReason, Usage};
use crate::ports::{ChatCall, ModelCalls, ModelError, ModelEvent, ModelStream, ToolInvocation};

/// What one call of a model does.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Streams these deltas, then usage.
    Text(Vec<&'static str>),
    /// Asks for one tool call.
    Tool {
        name: &'static str,
        arguments_json: &'static str,
    },
    /// Fails before the first event.
    Fail(FailureReason),
    /// Never answers.
    Hang,
}

/// Models answering from scripts; an alias with no script left answers "ok".
#[derive(Debug, Clone, Default)]
pub struct ScriptedModels {
    scripts: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    calls: Arc<Mutex<Vec<ChatCall>>>,
    open: Arc<AtomicUsize>,
}

/// Counts an open stream until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ScriptedModels {
    /// `model`'s next calls reply with `replies`, in order.
    pub fn script(&self, model: &str, replies: impl IntoIterator<Item = Reply>) {
        if let Ok(mut scripts) = self.scripts.lock() {
            scripts.entry(model.to_owned()).or_default().extend(replies);
        }
    }

    /// Every call so far, in the order they were made.
    pub fn calls(&self) -> Vec<ChatCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Streams not yet dropped.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn next(&self, call: &ChatCall) -> Reply {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call.clone());
        }
        self.scripts
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(&call.model).and_then(VecDeque::pop_front))
            .unwrap_or(Reply::Text(vec!["ok"]))
    }
}

fn usage() -> Usage {
    Usage {
        input_tokens: 10,
        output_tokens: 5,
        cost_micros: 1,
    }
}

impl ModelCalls for ScriptedModels {
    fn stream(&self, call: ChatCall) -> BoxFuture<'_, Result<ModelStream, ModelError>> {
        let reply = self.next(&call);
        Box::pin(async move {
            self.open.fetch_add(1, Ordering::SeqCst);
            let open = Open(self.open.clone());
            let events: Vec<Result<ModelEvent, ModelError>> = match reply {
                Reply::Text(deltas) => deltas
                    .into_iter()
                    .map(|d| Ok(ModelEvent::Delta(d.to_owned())))
                    .chain([Ok(ModelEvent::Done(usage()))])
                    .collect(),
                Reply::Tool {
                    name,
                    arguments_json,
                } => vec![
                    Ok(ModelEvent::ToolCall(ToolInvocation {
                        id: format!("call-{name}"),
                        name: name.to_owned(),
                        arguments_json: arguments_json.to_owned(),
                    })),
                    Ok(ModelEvent::Done(usage())),
                ],
                Reply::Fail(reason) => return Err(ModelError::new(reason, "scripted failure")),
                Reply::Hang => {
                    let stream = futures::stream::pending().map(move |e| {
                        let _held = &open;
                        e
                    });
                    return Ok(stream.boxed());
                }
            };
            Ok(futures::stream::iter(events)
                .map(move |e| {
                    let _held = &open;
                    e
                })
                .boxed())
        })
    }

    fn complete(&self, call: ChatCall) -> BoxFuture<'_, Result<(String, Usage), ModelError>> {
        let reply = self.next(&call);
        Box::pin(async move {
            match reply {
                Reply::Text(deltas) => Ok((deltas.concat(), usage())),
                Reply::Tool { .. } => Ok((String::new(), usage())),
                Reply::Fail(reason) => Err(ModelError::new(reason, "scripted failure")),
                Reply::Hang => futures::future::pending().await,
            }
        })
    }
}
