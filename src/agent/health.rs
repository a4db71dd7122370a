//! Health checks (tcp, http, exec) and the after-switch verification with thresholds,
//! a deadline and `minReadySeconds`.

use super::hooks::{self, HookEnv};
use crate::api::{Command, HealthCheck};
use chrono::{DateTime, Utc};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// Why a switched version did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health check did not pass {needed} time(s) in a row within {deadline}s (last failure: {last})")]
    Deadline {
        needed: u32,
        deadline: u32,
        last: String,
    },
}

impl HealthError {
    pub fn reason(&self) -> &'static str {
        "HealthDeadline"
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

/// After a switch: probes every `periodSeconds` until `successThreshold` passes in a row
/// (within `deadlineSeconds`), then until it has stayed healthy for `min_ready`
/// (`failureThreshold` failures in a row lose readiness). Returns when readiness began.
/// Without a check, the instance is healthy at once and only `min_ready` is waited.
/// `on_ready` hears each change of readiness (`Some(since)` or `None`), for the status.
pub async fn verify<F, Fut>(
    check: Option<&HealthCheck>,
    min_ready: Duration,
    mut probe: F,
    mut on_ready: impl FnMut(Option<DateTime<Utc>>),
) -> Result<DateTime<Utc>, HealthError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let Some(check) = check else {
        let since = Utc::now();
        on_ready(Some(since));
        tokio::time::sleep(min_ready).await;
        return Ok(since);
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(u64::from(check.deadline_seconds));
    let period = Duration::from_secs(u64::from(check.period_seconds.max(1)));
    let timeout = Duration::from_secs(u64::from(check.timeout_seconds.max(1)));
    let needed = check.success_threshold.max(1);
    let mut successes = 0;
    let mut failures = 0;
    let mut ready: Option<(Instant, DateTime<Utc>)> = None;
    let mut last = String::from("none yet");
    loop {
        let result = match tokio::time::timeout(timeout, probe()).await {
            Ok(r) => r,
            Err(_) => Err(format!("check timed out after {}s", timeout.as_secs())),
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if ready.is_none() && successes >= needed {
                    let since = Utc::now();
                    ready = Some((now, since));
                    on_ready(Some(since));
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "health check failed");
                last = e;
                failures += 1;
                successes = 0;
                if failures >= check.failure_threshold.max(1) && ready.take().is_some() {
                    on_ready(None);
                }
            }
        }
        match ready {
            Some((at, since)) if now - at >= min_ready => return Ok(since),
            Some(_) => {}
            None if now >= deadline => {
                return Err(HealthError::Deadline {
                    needed,
                    deadline: check.deadline_seconds,
                    last,
                })
            }
            None => {}
        }
        let next = match ready {
            // Do not sleep past the end of the min-ready window.
            Some((at, _)) => period.min((at + min_ready).saturating_duration_since(now)),
            None => period,
        };
        tokio::time::sleep(next.max(Duration::from_millis(1))).await;
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
        verify(Some(&check(3, 3, 60)), Duration::ZERO, p, |_| {})
            .await
            .unwrap();
        assert_eq!(*calls.lock().unwrap(), 6);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn verify_should_fail_with_health_deadline_when_never_healthy() {
        let (p, _) = scripted(&[false]);
        let start = Instant::now();
        let err = verify(Some(&check(1, 3, 10)), Duration::ZERO, p, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "HealthDeadline");
        assert!(err.to_string().contains("down"), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn verify_should_hold_min_ready_and_restart_it_after_failure_threshold() {
        // Healthy at t=0, then fails twice (threshold 2) at t=1,2: readiness lost;
        // healthy again from t=3, so min-ready (5s) ends at t=8.
        let (p, _) = scripted(&[true, false, false, true]);
        let start = Instant::now();
        let mut changes = Vec::new();
        verify(Some(&check(1, 2, 60)), Duration::from_secs(5), p, |r| {
            changes.push((start.elapsed().as_secs(), r.is_some()))
        })
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        assert_eq!(changes, vec![(0, true), (2, false), (3, true)]);
        // A single failure below the threshold does not reset the window.
        let (p, _) = scripted(&[true, false, true]);
        let start = Instant::now();
        verify(Some(&check(1, 2, 60)), Duration::from_secs(5), p, |_| {})
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
