//! A model's metric handles, resolved once so that recording an event is a
//! few atomic operations, with no registry lookup and no allocation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use tonic::Code;

use crate::error::{Error, Stage};
use crate::metrics::{
    BACKEND_DURATION, BACKEND_PANICS_TOTAL, CANCELLED_TOTAL, GENERATED_TOKENS_TOTAL,
    PROMPT_TOKENS_TOTAL, QUEUE_WAIT, REJECTED_TOTAL, REQUEST_DURATION, REQUESTS_TOTAL,
    TIME_TO_FIRST_TOKEN, WORKER_RESTARTS_TOTAL, recorder,
};
use crate::tenant::ANONYMOUS;

/// The RPC a request came through: the `method` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `Generate`.
    Generate,
    /// `GenerateStream`.
    GenerateStream,
    /// An item of a `GenerateBatch` call (each item is one call).
    GenerateBatch,
}

/// How many [`Method`]s there are.
const METHODS: usize = 3;

impl Method {
    /// The label value: the RPC's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Generate => "Generate",
            Method::GenerateStream => "GenerateStream",
            Method::GenerateBatch => "GenerateBatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// gRPC status codes, 0 to 16.
const CODES: usize = 17;

/// The canonical name of a gRPC code, as in the gRPC spec: the `code`
/// label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The reasons counted in `infergate_rejected_total`.
const REJECT_REASONS: [&str; 9] = [
    "queue_full",
    "deadline",
    "shutting_down",
    "model_down",
    "invalid_argument",
    "not_found",
    "permission_denied",
    "rate_limit",
    "concurrency_limit",
];

/// Most distinct tenants a model labels its series with; calls of any
/// further tenant count under `other`, so the label set stays bounded
/// whatever identities clients present.
const MAX_TENANTS: usize = 1024;

/// The tenant label of calls beyond [`MAX_TENANTS`].
const OTHER_TENANT: &str = "other";

/// Counters of tenants other than `anonymous`, registered on first use.
#[derive(Default)]
struct TenantCounters {
    /// The tenants labelled so far (at most [`MAX_TENANTS`]).
    names: HashSet<Arc<str>>,
    counters: HashMap<(Arc<str>, TenantSeries), Counter>,
}

/// Which per-tenant series a counter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TenantSeries {
    Requests(Method, usize),
    Rejected(usize),
}

/// The reasons counted in `infergate_worker_restarts_total`: what
/// [`crate::backend::Health::Restart`] and the pool report.
/// A reason not in the list (a custom backend's own) counts as `other`, so
/// the label set stays bounded and no restart is filed under a wrong cause.
pub const RESTART_REASONS: [&str; 7] = [
    "exited",
    "hung",
    "cancelled",
    "malformed",
    "panic",
    "start_failed",
    "other",
];

/// The index of a restart reason in [`RESTART_REASONS`], `other` if absent.
fn restart_reason(reason: &str) -> usize {
    RESTART_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(RESTART_REASONS.len() - 1)
}

/// One model's handles. Series that depend on an outcome (a code, a
/// reason) are registered on first use, so a scrape lists only what
/// happened; the rest exist from start-up, at zero.
pub struct ModelMetrics {
    model: String,
    queue_wait: Histogram,
    backend_duration: Histogram,
    time_to_first_token: Histogram,
    request_duration: [Histogram; METHODS],
    /// Anonymous calls' counters, resolved once: the hot path of a
    /// gateway without keys takes no lock.
    requests: [[OnceLock<Counter>; CODES]; METHODS],
    rejected: [OnceLock<Counter>; REJECT_REASONS.len()],
    /// Other tenants' counters.
    by_tenant: Mutex<TenantCounters>,
    cancelled: [OnceLock<Counter>; 2],
    panics: Counter,
    restarts: [OnceLock<Counter>; RESTART_REASONS.len()],
    prompt_tokens: Counter,
    generated_tokens: Counter,
}

impl ModelMetrics {
    /// Resolves the handles of `model` (installing the recorder if this is
    /// the first model of the process).
    pub fn new(model: &str) -> Self {
        let metrics = Self::calls_only(model);
        let label = || metrics.model.clone();
        let metrics = ModelMetrics {
            queue_wait: histogram!(QUEUE_WAIT, "model" => label()),
            backend_duration: histogram!(BACKEND_DURATION, "model" => label()),
            time_to_first_token: histogram!(TIME_TO_FIRST_TOKEN, "model" => label()),
            panics: counter!(BACKEND_PANICS_TOTAL, "model" => label()),
            prompt_tokens: counter!(PROMPT_TOKENS_TOTAL, "model" => label()),
            generated_tokens: counter!(GENERATED_TOKENS_TOTAL, "model" => label()),
            ..metrics
        };
        // Present from start-up, at zero.
        metrics.panics.absolute(0);
        metrics.prompt_tokens.absolute(0);
        metrics.generated_tokens.absolute(0);
        metrics
    }

    /// Handles for calls that name no served model: only the per-RPC
    /// series; there is no pool, so the rest record nothing.
    pub fn calls_only(model: &str) -> Self {
        recorder();
        let per_method = |method: Method| histogram!(REQUEST_DURATION, "model" => model.to_string(), "method" => method.as_str());
        ModelMetrics {
            model: model.to_string(),
            queue_wait: Histogram::noop(),
            backend_duration: Histogram::noop(),
            time_to_first_token: Histogram::noop(),
            request_duration: [
                per_method(Method::Generate),
                per_method(Method::GenerateStream),
                per_method(Method::GenerateBatch),
            ],
            requests: Default::default(),
            rejected: Default::default(),
            by_tenant: Mutex::default(),
            cancelled: Default::default(),
            restarts: Default::default(),
            panics: Counter::noop(),
            prompt_tokens: Counter::noop(),
            generated_tokens: Counter::noop(),
        }
    }

    /// An RPC of `tenant` finished with `code` after `elapsed`.
    pub fn request_finished(
        &self,
        method: Method,
        code: Code,
        elapsed: Duration,
        tenant: &Arc<str>,
    ) {
        self.request_duration[method.index()].record(elapsed.as_secs_f64());
        let code = code as usize % CODES;
        let register = |tenant: &str| {
            counter!(REQUESTS_TOTAL,
                "model" => self.model.clone(),
                "method" => method.as_str(),
                "code" => code_name(Code::from(code as i32)),
                "tenant" => tenant.to_string())
        };
        if &**tenant == ANONYMOUS {
            self.requests[method.index()][code]
                .get_or_init(|| register(ANONYMOUS))
                .increment(1);
        } else {
            self.tenant_counter(tenant, TenantSeries::Requests(method, code), register)
                .increment(1);
        }
    }

    /// Counts a refusal or expiry of a call of `tenant`, if `error` is one.
    pub fn rejected(&self, error: &Error, tenant: &Arc<str>) {
        let reason = error.reason();
        let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason) else {
            return;
        };
        let register = |tenant: &str| {
            counter!(REJECTED_TOTAL,
                "model" => self.model.clone(),
                "reason" => REJECT_REASONS[i],
                "tenant" => tenant.to_string())
        };
        if &**tenant == ANONYMOUS {
            self.rejected[i]
                .get_or_init(|| register(ANONYMOUS))
                .increment(1);
        } else {
            self.tenant_counter(tenant, TenantSeries::Rejected(i), register)
                .increment(1);
        }
    }

    /// The counter of a named tenant's series, registered on first use
    /// (as `other` once [`MAX_TENANTS`] tenants have been seen).
    fn tenant_counter(
        &self,
        tenant: &Arc<str>,
        series: TenantSeries,
        register: impl Fn(&str) -> Counter,
    ) -> Counter {
        let mut state = self
            .by_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let label: Arc<str> = if state.names.contains(tenant) {
            tenant.clone()
        } else if state.names.len() < MAX_TENANTS {
            state.names.insert(tenant.clone());
            tenant.clone()
        } else {
            Arc::from(OTHER_TENANT)
        };
        state
            .counters
            .entry((label.clone(), series))
            .or_insert_with(|| register(&label))
            .clone()
    }

    /// A call to this model went to its fallback `to` for `reason`.
    pub fn fell_back(&self, to: &str, reason: &'static str) {
        counter!(crate::metrics::FALLBACKS_TOTAL,
            "model" => self.model.clone(),
            "to" => to.to_string(),
            "reason" => reason)
        .increment(1);
    }

    /// A client went away while its call was at `stage`.
    pub fn cancelled(&self, stage: Stage) {
        let i = match stage {
            // Admission is never abandoned half-way: nothing to cancel yet.
            Stage::Admission | Stage::Queued => 0,
            Stage::Running => 1,
        };
        self.cancelled[i]
            .get_or_init(|| {
                counter!(CANCELLED_TOTAL, "model" => self.model.clone(), "stage" => stage.as_str())
            })
            .increment(1);
    }

    /// A worker picked a call up after it waited `wait`.
    pub fn queue_wait(&self, wait: Duration) {
        self.queue_wait.record(wait.as_secs_f64());
    }

    /// A backend call took `elapsed`.
    pub fn backend_call(&self, elapsed: Duration) {
        self.backend_duration.record(elapsed.as_secs_f64());
    }

    /// A stream produced its first token `elapsed` after the request came.
    pub fn first_token(&self, elapsed: Duration) {
        self.time_to_first_token.record(elapsed.as_secs_f64());
    }

    /// A backend call panicked.
    pub fn panicked(&self) {
        self.panics.increment(1);
    }

    /// A worker's backend was replaced (or failed to start) for `reason`.
    pub fn worker_restarted(&self, reason: &'static str) {
        let i = restart_reason(reason);
        self.restarts[i]
            .get_or_init(|| {
                counter!(WORKER_RESTARTS_TOTAL, "model" => self.model.clone(), "reason" => RESTART_REASONS[i])
            })
            .increment(1);
    }

    /// A call succeeded with these token counts.
    pub fn tokens(&self, prompt: u32, generated: u32) {
        self.prompt_tokens.increment(u64::from(prompt));
        self.generated_tokens.increment(u64::from(generated));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_restart_reasons_count_as_other() {
        assert_eq!(RESTART_REASONS[restart_reason("exited")], "exited");
        assert_eq!(RESTART_REASONS[restart_reason("hung")], "hung");
        assert_eq!(
            RESTART_REASONS[restart_reason("my-backend-gave-up")],
            "other"
        );
    }

    #[test]
    fn code_names_follow_the_grpc_spec() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(Code::Unauthenticated as usize, CODES - 1);
    }
}
