//! Health checks (tcp, http, exec) and the after-switch verification with thresholds,
//! a deadline, `minReadySeconds` and the supervised service's uptime.

use super::hooks::{self, HookEnv};
use super::service::{ServiceState, CRASH_LOOP_EXITS, MIN_SERVICE_UPTIME};
use crate::api::{Command, HealthCheck};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a switched version did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Not one probe passed by the deadline.
    #[error("never passed: {last} ({tries} {} over {secs} s)", if *tries == 1 { "try" } else { "tries" })]
    NeverPassed { last: String, tries: u32, secs: u64 },
    /// Some probes passed, but never `successThreshold` in a row for long enough.
    #[error("not ready within {deadline} s: {passes} of {tries} tries passed, {needed} in a row needed (last failure: {last})")]
    Deadline {
        needed: u32,
        deadline: u32,
        passes: u32,
        tries: u32,
        last: String,
    },
    /// The supervised service kept exiting after the switch.
    #[error(
        "service keeps exiting: restarted {restarts} time(s) since the switch, last {last_exit}"
    )]
    ServiceCrashLoop { restarts: u32, last_exit: String },
}

impl HealthError {
    pub fn reason(&self) -> &'static str {
        match self {
            HealthError::NeverPassed { .. } | HealthError::Deadline { .. } => "HealthDeadline",
            HealthError::ServiceCrashLoop { .. } => "ServiceCrashLoop",
        }
    }
}

/// Runs one check: `Ok` when healthy, else what went wrong.
pub async fn probe(check: &HealthCheck, env: &HookEnv, cwd: &Path) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(check.timeout_seconds.max(1)));
    if let Some(tcp) = &check.tcp {
        let host = tcp.host.as_deref().unwrap_or("127.0.0.1");
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, tcp.port)))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("tcp connect to {host}:{}: {e}", tcp.port)),
            Err(_) => Err(format!("tcp connect to {host}:{} timed out", tcp.port)),
        };
    }
    if let Some(http) = &check.http {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let resp = client
            .get(&http.url)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", http.url))?;
        let code = resp.status().as_u16();
        let ok = if http.expect_status.is_empty() {
            resp.status().is_success()
        } else {
            http.expect_status.contains(&code)
        };
        return if ok {
            Ok(())
        } else {
            Err(format!("GET {} answered {code}", http.url))
        };
    }
    if let Some(exec) = &check.exec {
        let cmd = Command {
            command: exec.command.clone(),
            timeout_seconds: check.timeout_seconds.max(1),
        };
        return hooks::run_command(env, &cmd, cwd, "healthCheck")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    Ok(())
}

/// The health check's side of a verification: thresholds and what the probes said.
#[derive(Debug)]
struct Probes {
    needed: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    tries: u32,
    passes: u32,
    first_try: Option<Instant>,
    last: String,
    /// Since when the check has held (`successThreshold` passes in a row, not lost since).
    ready: Option<(Instant, DateTime<Utc>)>,
}

impl Probes {
    fn new(check: &HealthCheck) -> Probes {
        Probes {
            needed: check.success_threshold.max(1),
            failure_threshold: check.failure_threshold.max(1),
            successes: 0,
            failures: 0,
            tries: 0,
            passes: 0,
            first_try: None,
            last: String::from("none yet"),
            ready: None,
        }
    }

    fn record(&mut self, result: Result<(), String>, now: Instant) {
        self.tries += 1;
        self.first_try.get_or_insert(now);
        match result {
            Ok(()) => {
                self.passes += 1;
                self.successes += 1;
                self.failures = 0;
                if self.ready.is_none() && self.successes >= self.needed {
                    self.ready = Some((now, Utc::now()));
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "health check failed");
                self.last = e;
                self.failures += 1;
                self.successes = 0;
                if self.failures >= self.failure_threshold {
                    self.ready = None;
                }
            }
        }
    }

    /// What went wrong, at the deadline.
    fn error(&self, deadline: u32, now: Instant) -> HealthError {
        if self.passes == 0 {
            let secs = self.first_try.map_or(0, |t| {
                now.saturating_duration_since(t).as_secs_f64().round() as u64
            });
            HealthError::NeverPassed {
                last: self.last.clone(),
                tries: self.tries,
                secs,
            }
        } else {
            HealthError::Deadline {
                needed: self.needed,
                deadline,
                passes: self.passes,
                tries: self.tries,
                last: self.last.clone(),
            }
        }
    }
}

/// The supervised service's side of a verification: its state, and its restart count
/// when the verification began.
struct Service {
    state: watch::Receiver<ServiceState>,
    base_restarts: u32,
}

impl Service {
    fn restarts(&self) -> u32 {
        self.state
            .borrow()
            .status
            .restarts
            .saturating_sub(self.base_restarts)
    }

    fn crash_loop(&self) -> HealthError {
        let st = self.state.borrow();
        HealthError::ServiceCrashLoop {
            restarts: st.status.restarts.saturating_sub(self.base_restarts),
            last_exit: st
                .status
                .last_exit
                .as_ref()
                .map_or_else(|| "exit unknown".to_string(), |e| e.message.clone()),
        }
    }

    /// Since when the process has been up, with the wall-clock start.
    fn up(&self) -> Option<(Instant, DateTime<Utc>)> {
        let st = self.state.borrow();
        Some((st.up_since?, st.status.started_at.unwrap_or_else(Utc::now)))
    }

    /// The next change of the service's state; never, once the supervisor is gone.
    async fn changed(&mut self) {
        if self.state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The later of two starts: readiness needs both the check and the process.
fn later(
    a: (Instant, DateTime<Utc>),
    b: Option<(Instant, DateTime<Utc>)>,
) -> Option<(Instant, DateTime<Utc>)> {
    let b = b?;
    Some(if b.0 > a.0 { b } else { a })
}

/// After a switch: probes every `periodSeconds` until `successThreshold` passes in a row
/// (within `deadlineSeconds`), then until it has stayed healthy for `min_ready`
/// (`failureThreshold` failures in a row lose readiness). Returns when readiness began.
/// Without a check, the instance is healthy at once and only `min_ready` is waited.
///
/// With a supervised `service`, readiness also needs the process up, for at least
/// [`MIN_SERVICE_UPTIME`]: an exit loses readiness at once, and [`CRASH_LOOP_EXITS`]
/// exits since the verification began fail it with `ServiceCrashLoop` (as does the
/// deadline, when the service exited at all). `on_ready` hears each change of readiness
/// (`Some(since)` or `None`), for the status.
pub async fn verify<F, Fut>(
    check: Option<&HealthCheck>,
    min_ready: Duration,
    service: Option<watch::Receiver<ServiceState>>,
    mut probe: F,
    mut on_ready: impl FnMut(Option<DateTime<Utc>>),
) -> Result<DateTime<Utc>, HealthError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut service = service.map(|mut state| {
        let base_restarts = state.borrow_and_update().status.restarts;
        Service {
            state,
            base_restarts,
        }
    });
    let window = if service.is_some() {
        min_ready.max(MIN_SERVICE_UPTIME)
    } else {
        min_ready
    };
    let deadline = check.map(|c| start + Duration::from_secs(u64::from(c.deadline_seconds)));
    let period = check.map_or(Duration::MAX, |c| {
        Duration::from_secs(u64::from(c.period_seconds.max(1)))
    });
    let timeout = Duration::from_secs(u64::from(check.map_or(1, |c| c.timeout_seconds.max(1))));
    let mut probes = check.map(Probes::new);
    let no_check_ready = (start, Utc::now());
    let mut next_probe = start;
    let mut told: Option<DateTime<Utc>> = None;
    loop {
        if let (Some(p), Some(_)) = (probes.as_mut(), check) {
            if Instant::now() >= next_probe {
                let result = match tokio::time::timeout(timeout, probe()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("check timed out after {}s", timeout.as_secs())),
                };
                let now = Instant::now();
                p.record(result, now);
                next_probe = now + period;
            }
        }
        if let Some(svc) = &service {
            if svc.restarts() >= CRASH_LOOP_EXITS {
                return Err(svc.crash_loop());
            }
        }
        let check_ready = match &probes {
            Some(p) => p.ready,
            None => Some(no_check_ready),
        };
        let ready = match (&service, check_ready) {
            (_, None) => None,
            (None, Some(c)) => Some(c),
            (Some(svc), Some(c)) => later(c, svc.up()),
        };
        let since = ready.map(|r| r.1);
        if since != told {
            on_ready(since);
            told = since;
        }
        let now = Instant::now();
        if let Some((at, since)) = ready {
            if now - at >= window {
                return Ok(since);
            }
        }
        // A deadline comes with a check, and so with its probes.
        if let (None, Some(d), Some(p), Some(c)) = (ready, deadline, &probes, check) {
            if now >= d {
                return Err(match &service {
                    Some(svc) if svc.restarts() > 0 => svc.crash_loop(),
                    _ => p.error(c.deadline_seconds, now),
                });
            }
        }
        // Sleep to the next probe, the end of the window, or the deadline, whichever is
        // first; a change of the service wakes it sooner.
        let mut wake = next_probe;
        if check.is_none() {
            wake = now + Duration::from_secs(3600);
        }
        match ready {
            Some((at, _)) => wake = wake.min(at + window),
            None => {
                if let Some(d) = deadline {
                    wake = wake.min(d);
                }
            }
        }
        let wake = wake.max(now + Duration::from_millis(1));
        match service.as_mut() {
            Some(svc) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = svc.changed() => {}
                }
            }
            None => tokio::time::sleep_until(wake).await,
        }
    }
}

/// The health check kept running while an instance is Running: `failureThreshold`
/// failures in a row make it unhealthy, `successThreshold` passes in a row healthy again.
#[derive(Debug)]
pub struct Monitor {
    check: HealthCheck,
    healthy: bool,
    successes: u32,
    failures: u32,
    /// When the next probe is due; kept across a cancelled wait, so that re-polling
    /// after an interruption neither probes early nor loses the period.
    next_at: Instant,
}

impl Monitor {
    /// Starts watching an instance that is `healthy` now; the first probe is one period on.
    pub fn new(check: HealthCheck, healthy: bool) -> Monitor {
        let next_at = Instant::now() + Self::period_of(&check);
        Monitor {
            check,
            healthy,
            successes: 0,
            failures: 0,
            next_at,
        }
    }

    fn period_of(check: &HealthCheck) -> Duration {
        Duration::from_secs(u64::from(check.period_seconds.max(1)))
    }

    pub fn check(&self) -> &HealthCheck {
        &self.check
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Counts one probe result; returns the new health when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.healthy && self.successes >= self.check.success_threshold.max(1) {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy && self.failures >= self.check.failure_threshold.max(1) {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }

    /// Probes every period until the health changes, and returns the new health.
    /// Cancel-safe: dropping it mid-probe only repeats that probe.
    pub async fn next_change<F, Fut>(&mut self, mut probe: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let timeout = Duration::from_secs(u64::from(self.check.timeout_seconds.max(1)));
        loop {
            tokio::time::sleep_until(self.next_at).await;
            let result = match tokio::time::timeout(timeout, probe()).await {
                Ok(r) => r,
                Err(_) => Err(format!("check timed out after {}s", timeout.as_secs())),
            };
            self.next_at = Instant::now() + Self::period_of(&self.check);
            if let Err(e) = &result {
                tracing::info!(error = %e, "health check failed");
            }
            if let Some(h) = self.record(result.is_ok()) {
                return h;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HttpCheck, TcpCheck};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    fn check(success: u32, failure: u32, deadline: u32) -> HealthCheck {
        HealthCheck {
            period_seconds: 1,
            timeout_seconds: 1,
            success_threshold: success,
            failure_threshold: failure,
            deadline_seconds: deadline,
            ..Default::default()
        }
    }

    /// A probe answering from a script (then repeating the last answer); counts calls.
    fn scripted(
        script: &[bool],
    ) -> (
        impl FnMut() -> futures::future::Ready<Result<(), String>>,
        Arc<Mutex<u32>>,
    ) {
        let mut q: VecDeque<bool> = script.iter().copied().collect();
        let last = *script.last().expect("script is not empty");
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let f = move || {
            *c.lock().expect("not poisoned") += 1;
            let ok = q.pop_front().unwrap_or(last);
            futures::future::ready(if ok { Ok(()) } else { Err("down".to_string()) })
        };
        (f, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_should_turn_unhealthy_after_failure_threshold_and_back_after_success_threshold(
    ) {
        // period 1s; failure threshold 3, success threshold 2.
        let (mut p, calls) = scripted(&[
            true, false, false, true, false, false, false, true, false, true, true,
        ]);
        let start = Instant::now();
        let mut m = Monitor::new(check(2, 3, 60), true);
        // Probes at t=1..7: ok, x, x, ok (resets), x, x, x -> unhealthy at t=7.
        assert!(!m.next_change(&mut p).await);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        assert_eq!(*calls.lock().unwrap(), 7);
        // t=8 ok, t=9 x (resets), t=10, t=11 ok -> healthy at t=11.
        assert!(m.next_change(&mut p).await);
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        assert!(m.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_should_keep_its_period_across_a_cancelled_wait() {
        let (mut p, calls) = scripted(&[false]);
        let start = Instant::now();
        let mut m = Monitor::new(check(1, 2, 60), true);
        // Cancelled half-way through the first period: no probe yet.
        let r = tokio::time::timeout(Duration::from_millis(500), m.next_change(&mut p)).await;
        assert!(r.is_err());
        assert_eq!(*calls.lock().unwrap(), 0);
        // Resumed: probes at t=1 and t=2 (not t=1.5), unhealthy at t=2.
        assert!(!m.next_change(&mut p).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(*calls.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn verify_should_need_success_threshold_passes_in_a_row() {
        let (p, calls) = scripted(&[false, true, false, true, true, true]);
        let start = Instant::now();
        verify(Some(&check(3, 3, 60)), Duration::ZERO, None, p, |_| {})
            .await
            .unwrap();
        assert_eq!(*calls.lock().unwrap(), 6);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn verify_should_fail_with_health_deadline_when_never_healthy() {
        let (p, _) = scripted(&[false]);
        let start = Instant::now();
        let err = verify(Some(&check(1, 3, 10)), Duration::ZERO, None, p, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "HealthDeadline");
        assert_eq!(err.to_string(), "never passed: down (11 tries over 10 s)");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn verify_should_count_the_passes_when_the_check_passed_but_not_in_a_row() {
        let (p, _) = scripted(&[true, false]);
        let err = verify(Some(&check(2, 3, 4)), Duration::ZERO, None, p, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "HealthDeadline");
        assert_eq!(
            err.to_string(),
            "not ready within 4 s: 1 of 5 tries passed, 2 in a row needed (last failure: down)"
        );
    }

    /// A service the test drives: starts and exits at the given (paused) times.
    fn service_at(
        tx: watch::Sender<ServiceState>,
        script: Vec<(u64, bool)>,
    ) -> tokio::task::JoinHandle<()> {
        let start = Instant::now();
        tokio::spawn(async move {
            for (at, up) in script {
                tokio::time::sleep_until(start + Duration::from_secs(at)).await;
                tx.send_modify(|s| {
                    if up {
                        s.up_since = Some(Instant::now());
                        s.status.running = true;
                        s.status.started_at = Some(Utc::now());
                    } else {
                        s.up_since = None;
                        s.status.running = false;
                        s.status.restarts += 1;
                        s.status.last_exit = Some(crate::api::ServiceExit {
                            exit_code: Some(1),
                            signal: None,
                            message: "exited with status 1".into(),
                            time: Utc::now(),
                        });
                    }
                });
            }
            // Keep the sender: a supervisor that is still there.
            std::future::pending::<()>().await;
        })
    }

    fn up_now() -> ServiceState {
        ServiceState {
            up_since: Some(Instant::now()),
            status: crate::api::ServiceStatus {
                running: true,
                started_at: Some(Utc::now()),
                ..Default::default()
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_exits_three_times_after_a_switch_should_fail_with_service_crash_loop() {
        // Exits at once, restarted after 1 s, 2 s, 4 s (the supervisor's backoff): the
        // third exit, at t=3, fails the switch, although the check always passes.
        let (tx, rx) = watch::channel(up_now());
        let _svc = service_at(
            tx,
            vec![(0, false), (1, true), (1, false), (3, true), (3, false)],
        );
        let (p, _) = scripted(&[true]);
        let start = Instant::now();
        let mut readiness = Vec::new();
        let err = verify(Some(&check(1, 3, 60)), Duration::ZERO, Some(rx), p, |r| {
            readiness.push((start.elapsed().as_secs(), r.is_some()))
        })
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "ServiceCrashLoop");
        assert_eq!(
            err.to_string(),
            "service keeps exiting: restarted 3 time(s) since the switch, last exited with status 1"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // Readiness was never held at the end: the last word is "not ready".
        assert_eq!(readiness.last().map(|r| r.1), Some(false), "{readiness:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_should_stay_up_min_service_uptime_before_the_switch_is_done() {
        // No check and no minReadySeconds: the window is still MIN_SERVICE_UPTIME of
        // uptime, counted again from the restart after one exit.
        let (tx, rx) = watch::channel(up_now());
        let _svc = service_at(tx, vec![(2, false), (3, true)]);
        let start = Instant::now();
        let mut readiness = Vec::new();
        verify(
            None,
            Duration::ZERO,
            Some(rx),
            || async { Ok(()) },
            |r| readiness.push((start.elapsed().as_secs(), r.is_some())),
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3) + MIN_SERVICE_UPTIME);
        assert_eq!(readiness, vec![(0, true), (2, false), (3, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_min_ready_should_win_over_the_service_uptime() {
        let (_tx, rx) = watch::channel(up_now());
        let start = Instant::now();
        let (p, _) = scripted(&[true]);
        verify(
            Some(&check(1, 3, 60)),
            Duration::from_secs(10),
            Some(rx),
            p,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_down_at_the_deadline_should_fail_as_a_crash_loop_not_a_health_deadline() {
        // One exit, and a restart only after the deadline: the service is the reason.
        let (tx, rx) = watch::channel(up_now());
        let _svc = service_at(tx, vec![(1, false), (30, true)]);
        let (p, _) = scripted(&[false]);
        let err = verify(Some(&check(1, 3, 5)), Duration::ZERO, Some(rx), p, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ServiceCrashLoop");
        assert!(err.to_string().contains("restarted 1 time(s)"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn verify_should_hold_min_ready_and_restart_it_after_failure_threshold() {
        // Healthy at t=0, then fails twice (threshold 2) at t=1,2: readiness lost;
        // healthy again from t=3, so min-ready (5s) ends at t=8.
        let (p, _) = scripted(&[true, false, false, true]);
        let start = Instant::now();
        let mut changes = Vec::new();
        verify(
            Some(&check(1, 2, 60)),
            Duration::from_secs(5),
            None,
            p,
            |r| changes.push((start.elapsed().as_secs(), r.is_some())),
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        assert_eq!(changes, vec![(0, true), (2, false), (3, true)]);
        // A single failure below the threshold does not reset the window.
        let (p, _) = scripted(&[true, false, true]);
        let start = Instant::now();
        verify(
            Some(&check(1, 2, 60)),
            Duration::from_secs(5),
            None,
            p,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_check_only_min_ready_should_be_waited() {
        let start = Instant::now();
        let mut told = None;
        verify(
            None,
            Duration::from_secs(3),
            None,
            || async { Err("never called".to_string()) },
            |r| told = r,
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(told.is_some(), "healthy at once");
    }

    fn env(dir: &Path) -> HookEnv {
        HookEnv::new(
            None,
            &Default::default(),
            &hooks::DeployVars {
                app: "a",
                namespace: "n",
                version: "1",
                previous_version: None,
                release_dir: dir,
                path: dir,
                machine: "m",
            },
        )
    }

    #[tokio::test]
    async fn tcp_probes_should_pass_only_while_something_listens() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = check(1, 1, 1);
        c.tcp = Some(TcpCheck { host: None, port });
        assert_eq!(probe(&c, &env(dir.path()), dir.path()).await, Ok(()));
        drop(listener);
        assert!(probe(&c, &env(dir.path()), dir.path()).await.is_err());
    }

    #[tokio::test]
    async fn http_probes_should_honour_expect_status() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            }
        });
        let mut c = check(1, 1, 1);
        c.http = Some(HttpCheck {
            url: format!("http://{addr}/healthz"),
            expect_status: vec![],
        });
        assert_eq!(probe(&c, &env(dir.path()), dir.path()).await, Ok(()));
        c.http.as_mut().unwrap().expect_status = vec![200];
        let err = probe(&c, &env(dir.path()), dir.path()).await.unwrap_err();
        assert!(err.contains("204"), "{err}");
    }

    #[tokio::test]
    async fn exec_probes_should_follow_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = check(1, 1, 1);
        c.exec = Some(Command {
            command: "test \"$DEPLOY_APP\" = a".into(),
            timeout_seconds: 1,
        });
        assert_eq!(probe(&c, &env(dir.path()), dir.path()).await, Ok(()));
        c.exec.as_mut().unwrap().command = "exit 1".into();
        assert!(probe(&c, &env(dir.path()), dir.path()).await.is_err());
    }
}
