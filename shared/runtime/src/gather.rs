//! A response stream that lets the messages of one scheduler pass travel together.
//!
//! A streamed call's events are produced by other tasks (a turn's advisors, each streaming
//! from the gateway), and hyper runs each HTTP/2 stream in a task of its own that hands every
//! frame to the connection's task, which tokio then runs next (its LIFO slot): each event
//! becomes its own DATA frame and its own write system call, with the peer woken for each,
//! even when three advisors' text arrives in the same instant. [`Gather`] holds the first item
//! that arrives after the stream waited and yields once: the other tasks ready now run first,
//! and tonic's encoder, which takes every item that is ready into one frame, sends what they
//! produced with it. An item is late by one pass of the scheduler's queue at most.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

/// `inner`, gathering the items that are ready together (see the module).
#[derive(Debug)]
pub struct Gather<S: Stream> {
    inner: S,
    /// The first item after a wait, handed over after one yield.
    held: Option<S::Item>,
    /// Whether the last poll of `inner` found nothing ready.
    waited: bool,
}

impl<S: Stream> Gather<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            held: None,
            waited: true,
        }
    }
}

impl<S: Stream + Unpin> Stream for Gather<S>
where
    S::Item: Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        if let Some(item) = this.held.take() {
            return Poll::Ready(Some(item));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(item)) if this.waited => {
                // The task is polled again after the tasks ready now (a task that wakes
                // itself is queued behind them, not ahead).
                this.waited = false;
                this.held = Some(item);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => {
                this.waited = true;
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let held = usize::from(self.held.is_some());
        let (low, high) = self.inner.size_hint();
        (
            low.saturating_add(held),
            high.and_then(|h| h.checked_add(held)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use futures::StreamExt;
    use futures::task::noop_waker_ref;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    #[tokio::test]
    async fn items_ready_together_are_handed_over_together_after_one_yield() {
        let (tx, rx) = mpsc::channel(8);
        let mut stream = Gather::new(ReceiverStream::new(rx));
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        // The first advisor's text: held for one yield.
        tx.send(1).await.expect("sent");
        assert!(stream.poll_next_unpin(&mut cx).is_pending(), "yields once");
        // Meanwhile the others'.
        tx.send(2).await.expect("sent");
        tx.send(3).await.expect("sent");
        // All three in one pass, as tonic's encoder takes them into one frame.
        let mut pass = Vec::new();
        while let Poll::Ready(Some(item)) = stream.poll_next_unpin(&mut cx) {
            pass.push(item);
        }
        assert_eq!(pass, [1, 2, 3]);
        // The end comes through, after what was held.
        tx.send(4).await.expect("sent");
        drop(tx);
        assert_eq!(stream.collect::<Vec<_>>().await, [4]);
    }

    #[tokio::test]
    async fn nothing_is_lost_or_reordered_under_a_real_scheduler() {
        let (tx, rx) = mpsc::channel(4);
        // Owned by the test: awaited below.
        #[allow(clippy::disallowed_methods)]
        let producer = tokio::spawn(async move {
            for n in 0..1000 {
                tx.send(n).await.expect("sent");
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let got: Vec<i32> = Gather::new(ReceiverStream::new(rx)).collect().await;
        producer.await.expect("producer");
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}
