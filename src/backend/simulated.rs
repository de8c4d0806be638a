//! The simulated backend: deterministic text after a configured delay.
//!
//! It stands in for a blocking model call in demos, tests and load tests. The
//! text is the input's words, one word per token: echoed once, or repeated
//! up to `max_tokens` (or the configured `output_tokens`); the
//! delay is `latency_ms` before the first token plus `token_latency_ms` per
//! token, spent sleeping (like waiting on a remote model) or spinning (like
//! local inference: that much CPU time, so calls slow down when they
//! outnumber the cores). It stops early when cancelled.

use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, BackendFactory, CallContext, Cancelled, Completion, FinishReason,
    GenerateParams, count_words,
};
use crate::config::{SimulatedConfig, SimulatedMode};

/// The word generated for an input that has none.
const FILLER_WORD: &str = "token";

/// Makes [`SimulatedBackend`]s; they share nothing, so this is just config.
#[derive(Debug, Clone)]
pub struct SimulatedFactory {
    config: SimulatedConfig,
}

impl SimulatedFactory {
    /// A factory for backends with these settings.
    pub fn new(config: SimulatedConfig) -> Self {
        SimulatedFactory { config }
    }
}

impl BackendFactory for SimulatedFactory {
    fn kind(&self) -> &str {
        "simulated"
    }

    fn create(&self, _worker: usize) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(SimulatedBackend {
            config: self.config.clone(),
        }))
    }
}

/// One worker's simulated model.
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    config: SimulatedConfig,
}

impl SimulatedBackend {
    /// Spends `duration` the configured way; `Err` if cancelled meanwhile.
    fn spend(&self, ctx: &CallContext<'_>, duration: Duration) -> Result<(), Cancelled> {
        if duration.is_zero() {
            return if ctx.is_cancelled() {
                Err(Cancelled)
            } else {
                Ok(())
            };
        }
        match self.config.mode {
            SimulatedMode::Sleep => ctx.sleep(duration),
            SimulatedMode::Spin => spin(ctx, duration),
        }
    }
}

/// Burns `duration` of this thread's CPU time, checking for cancellation as
/// it goes. CPU time, not wall time: when more calls spin than there are
/// cores, each takes longer, as real CPU-bound inference does.
fn spin(ctx: &CallContext<'_>, duration: Duration) -> Result<(), Cancelled> {
    let clock = ThreadClock::start();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        for _ in 0..2_000 {
            // xorshift: real work the optimiser cannot remove.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        if ctx.is_cancelled() {
            return Err(Cancelled);
        }
        if clock.elapsed() >= duration {
            return Ok(());
        }
    }
}

/// The CPU time the calling thread has used since `start`.
struct ThreadClock {
    start: Duration,
    wall: Instant,
}

impl ThreadClock {
    fn start() -> Self {
        ThreadClock {
            start: thread_cpu_time().unwrap_or_default(),
            wall: Instant::now(),
        }
    }

    fn elapsed(&self) -> Duration {
        match thread_cpu_time() {
            Some(now) => now.saturating_sub(self.start),
            // No per-thread clock: fall back to wall time.
            None => self.wall.elapsed(),
        }
    }
}

#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a
    // local; CLOCK_THREAD_CPUTIME_ID is supported on Linux and the BSDs.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if status != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

impl Backend for SimulatedBackend {
    fn generate(
        &mut self,
        params: &GenerateParams,
        ctx: &mut CallContext<'_>,
    ) -> Result<Completion, BackendError> {
        let input = params.input.text();
        let prompt_tokens = count_words(&input);
        let mut words: Vec<&str> = input.split_whitespace().collect();
        if words.is_empty() {
            words.push(FILLER_WORD);
        }
        let limit = params
            .max_tokens
            .or(self.config.output_tokens)
            .unwrap_or(u32::try_from(words.len()).unwrap_or(u32::MAX));

        self.spend(ctx, Duration::from_millis(self.config.latency_ms))?;

        let token_latency = Duration::from_millis(self.config.token_latency_ms);
        let mut text = String::new();
        let mut generated = 0u32;
        for word in words.iter().cycle().take(limit as usize) {
            if generated > 0 {
                self.spend(ctx, token_latency)?;
            }
            let piece = if generated == 0 {
                (*word).to_string()
            } else {
                format!(" {word}")
            };
            let before = text.len();
            text.push_str(&piece);
            if let Some(cut) = first_stop(&text, &params.stop) {
                // Emit what comes before the stop string, then end.
                if cut > before {
                    ctx.emit(&text[before..cut])?;
                }
                return Ok(Completion {
                    finish_reason: FinishReason::Stop,
                    prompt_tokens,
                    completion_tokens: generated,
                });
            }
            ctx.emit(&piece)?;
            generated += 1;
        }
        let finish_reason = if params.max_tokens.is_some() {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        Ok(Completion {
            finish_reason,
            prompt_tokens,
            completion_tokens: generated,
        })
    }
}

/// The byte offset of the earliest stop string in `text`, if any.
fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Input, TokenSink};
    use crate::cancel::CancelSignal;

    struct Collect(Vec<String>);
    impl TokenSink for Collect {
        fn emit(&mut self, text: &str) -> Result<(), Cancelled> {
            self.0.push(text.to_string());
            Ok(())
        }
    }

    fn params(prompt: &str, max_tokens: Option<u32>, stop: &[&str]) -> GenerateParams {
        GenerateParams {
            model: "m".into(),
            input: Input::Prompt(prompt.into()),
            max_tokens,
            temperature: None,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            seed: None,
        }
    }

    fn run(
        config: SimulatedConfig,
        params: &GenerateParams,
        cancel: &CancelSignal,
    ) -> (Vec<String>, Result<Completion, BackendError>) {
        let mut sink = Collect(Vec::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ctx = CallContext::new(cancel, deadline, &mut sink);
        let mut backend = SimulatedFactory::new(config).create(0).unwrap();
        let result = backend.generate(params, &mut ctx);
        (sink.0, result)
    }

    #[test]
    fn echoes_words_up_to_max_tokens() {
        let (tokens, result) = run(
            SimulatedConfig::default(),
            &params("a b c", Some(5), &[]),
            &CancelSignal::new(),
        );
        assert_eq!(tokens.concat(), "a b c a b");
        let completion = result.unwrap();
        assert_eq!(completion.finish_reason, FinishReason::Length);
        assert_eq!(completion.completion_tokens, 5);
        assert_eq!(completion.prompt_tokens, 3);
    }

    #[test]
    fn stops_before_a_stop_string() {
        let (tokens, result) = run(
            SimulatedConfig::default(),
            &params("one two three four", Some(10), &["three"]),
            &CancelSignal::new(),
        );
        assert_eq!(tokens.concat(), "one two ");
        assert_eq!(result.unwrap().finish_reason, FinishReason::Stop);
    }

    #[test]
    fn cancelled_call_stops_early() {
        let cancel = CancelSignal::new();
        cancel.cancel();
        let config = SimulatedConfig {
            latency_ms: 10_000,
            ..SimulatedConfig::default()
        };
        let start = Instant::now();
        let (tokens, result) = run(config, &params("x", None, &[]), &cancel);
        assert!(tokens.is_empty());
        assert!(result.is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn spin_mode_takes_its_latency() {
        let config = SimulatedConfig {
            latency_ms: 30,
            mode: SimulatedMode::Spin,
            ..SimulatedConfig::default()
        };
        let start = Instant::now();
        let (_, result) = run(config, &params("x", Some(1), &[]), &CancelSignal::new());
        assert!(result.is_ok());
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
