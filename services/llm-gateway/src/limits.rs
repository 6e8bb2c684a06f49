//! Per-caller limits: requests and tokens per minute (token buckets refilled continuously),
//! and calls in flight. Tokens are reserved before the call (the prompt's estimate plus
//! `max_tokens`, or a default output budget) and settled with the real usage after it, so a
//! burst can never overshoot the budget: the reservations of the calls in flight already
//! count. Over a limit is RESOURCE_EXHAUSTED with `retry-after`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boardroom_runtime::config::CallerLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use boardroom_runtime::status::Violations;

use crate::error::GatewayError;

struct Buckets {
    requests: f64,
    tokens: f64,
    refilled: Instant,
}

struct CallerState {
    limits: CallerLimits,
    buckets: Mutex<Buckets>,
    in_flight: Option<Arc<Semaphore>>,
}

impl CallerState {
    fn new(limits: CallerLimits) -> Self {
        Self {
            buckets: Mutex::new(Buckets {
                requests: limits.requests_per_minute as f64,
                tokens: limits.tokens_per_minute as f64,
                refilled: Instant::now(),
            }),
            in_flight: (limits.max_concurrent > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_concurrent))),
            limits,
        }
    }

    /// Refills both buckets for the time passed (capped at one minute's worth).
    fn refill(&self, buckets: &mut Buckets) {
        let now = Instant::now();
        let minutes = now.duration_since(buckets.refilled).as_secs_f64() / 60.0;
        buckets.refilled = now;
        let (rpm, tpm) = (
            self.limits.requests_per_minute as f64,
            self.limits.tokens_per_minute as f64,
        );
        buckets.requests = (buckets.requests + rpm * minutes).min(rpm);
        buckets.tokens = (buckets.tokens + tpm * minutes).min(tpm);
    }
}

/// Every caller's limits and what they have used.
pub struct Limiter {
    default: CallerLimits,
    overrides: HashMap<String, CallerLimits>,
    callers: Mutex<HashMap<String, Arc<CallerState>>>,
    /// Output tokens reserved for a request without `max_tokens`.
    default_output_tokens: u32,
}

/// An admitted call: its token reservation and its slot.
pub struct Admission {
    state: Option<Arc<CallerState>>,
    reserved: u64,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// The call used `tokens`: the difference to the reservation is returned (or charged).
    pub fn settle(mut self, tokens: u64) {
        if let Some(state) = self.state.take()
            && state.limits.tokens_per_minute > 0
        {
            let mut buckets = state.buckets.lock().unwrap_or_else(|e| e.into_inner());
            buckets.tokens += self.reserved as f64 - tokens as f64;
        }
    }
}

fn wait_for(missing: f64, per_minute: u64) -> Duration {
    Duration::from_secs_f64((missing / per_minute.max(1) as f64 * 60.0).max(0.001))
}

impl Limiter {
    /// Limits for every caller, overridden per caller.
    pub fn new(
        default: CallerLimits,
        overrides: HashMap<String, CallerLimits>,
        default_output_tokens: u32,
    ) -> Self {
        Self {
            default,
            overrides,
            callers: Mutex::new(HashMap::new()),
            default_output_tokens,
        }
    }

    /// Tokens to reserve for a call: the prompt's estimate and the output budget.
    pub fn reservation(&self, prompt_tokens: u32, max_tokens: Option<u32>) -> u64 {
        u64::from(prompt_tokens) + u64::from(max_tokens.unwrap_or(self.default_output_tokens))
    }

    fn state(&self, caller: &str) -> Arc<CallerState> {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        callers
            .entry(caller.to_owned())
            .or_insert_with(|| {
                let limits = self.overrides.get(caller).unwrap_or(&self.default).clone();
                Arc::new(CallerState::new(limits))
            })
            .clone()
    }

    /// Admits a call of `caller` reserving `tokens`, or says when to come back.
    pub fn admit(&self, caller: &str, tokens: u64) -> Result<Admission, GatewayError> {
        let state = self.state(caller);
        let l = &state.limits;
        if l.requests_per_minute == 0 && l.tokens_per_minute == 0 && l.max_concurrent == 0 {
            return Ok(Admission {
                state: None,
                reserved: 0,
                _slot: None,
            });
        }
        let slot = match &state.in_flight {
            Some(slots) => Some(
                slots
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| exhausted(caller, "max_concurrent", Duration::from_secs(1)))?,
            ),
            None => None,
        };
        {
            let mut buckets = state.buckets.lock().unwrap_or_else(|e| e.into_inner());
            state.refill(&mut buckets);
            if l.requests_per_minute > 0 && buckets.requests < 1.0 {
                let wait = wait_for(1.0 - buckets.requests, l.requests_per_minute);
                return Err(exhausted(caller, "requests_per_minute", wait));
            }
            if l.tokens_per_minute > 0 {
                if tokens > l.tokens_per_minute {
                    return Err(GatewayError::InvalidArgument(Violations::one(
                        "max_tokens",
                        format!(
                            "the call reserves {tokens} tokens, more than the caller's whole tokens_per_minute ({})",
                            l.tokens_per_minute
                        ),
                    )));
                }
                if buckets.tokens < tokens as f64 {
                    let wait = wait_for(tokens as f64 - buckets.tokens, l.tokens_per_minute);
                    return Err(exhausted(caller, "tokens_per_minute", wait));
                }
                buckets.tokens -= tokens as f64;
            }
            if l.requests_per_minute > 0 {
                buckets.requests -= 1.0;
            }
        }
        Ok(Admission {
            state: Some(state),
            reserved: tokens,
            _slot: slot,
        })
    }
}

fn exhausted(caller: &str, limit: &str, retry_after: Duration) -> GatewayError {
    metrics::counter!("llm_limited_total", "caller" => caller.to_owned(), "limit" => limit.to_owned())
        .increment(1);
    GatewayError::ResourceExhausted {
        message: format!("caller `{caller}` is over its {limit}"),
        retry_after,
    }
}
