//! A real browser for the dashboard's tests and benchmark: Debian's Chromium driven by Playwright
//! (`playwright-core`, installed by `hack/install-deps` into `.deps/browser`) through
//! `tests/browser/driver.mjs`, which takes one JSON request a line on stdin and answers
//! one line each on stdout. A missing part fails the test with how to install it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// What a driver call may take beyond its own timeout.
const SLACK: Duration = Duration::from_secs(15);
/// How long the browser may take to start.
const LAUNCH: Duration = Duration::from_secs(60);

pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    next_id: u64,
}

impl Browser {
    /// Starts the driver and its browser; panics with the install hint when a part is
    /// missing.
    pub fn launch() -> Browser {
        let root = env!("CARGO_MANIFEST_DIR");
        let hint = "run hack/install-deps (it installs chromium, chromium-driver, node and \
                    playwright-core into .deps/browser)";
        let mut child = Command::new("node")
            .arg(format!("{root}/tests/browser/driver.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): {hint}"));
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut stderr = child.stderr.take().expect("stderr was piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let mut b = Browser {
            child,
            stdin,
            lines,
            stderr: Some(stderr),
            next_id: 1,
        };
        match b.lines.recv_timeout(LAUNCH) {
            Ok(line) if line.contains("\"ready\"") => b,
            other => {
                let _ = b.child.kill();
                let _ = b.child.wait();
                let err = b
                    .stderr
                    .take()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_default();
                panic!("the browser did not start ({other:?}): {hint}\ndriver stderr:\n{err}");
            }
        }
    }

    /// One request; its value, or the driver's error.
    pub fn try_call(&mut self, op: &str, mut args: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let wait = args
            .get("timeoutMs")
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(10))
            + SLACK;
        args["op"] = json!(op);
        args["id"] = json!(id);
        writeln!(self.stdin, "{args}").map_err(|e| format!("the driver went away: {e}"))?;
        // An answer to an earlier request that came after its caller gave up is skipped.
        let deadline = std::time::Instant::now() + wait;
        let v = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("no answer to {op} within {wait:?}"))?;
            let v: Value =
                serde_json::from_str(&line).map_err(|e| format!("not JSON ({e}): {line}"))?;
            if v["id"] == json!(id) {
                break v;
            }
        };
        if v["ok"] == json!(true) {
            Ok(v["value"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("unknown error").to_string())
        }
    }

    /// One request; panics with the driver's error.
    pub fn call(&mut self, op: &str, args: Value) -> Value {
        self.try_call(op, args.clone())
            .unwrap_or_else(|e| panic!("browser {op} {args}: {e}"))
    }

    pub fn goto(&mut self, url: &str) {
        self.call("goto", json!({ "url": url }));
    }

    /// Waits until an element matching `selector` holds `text`; its whole text.
    pub fn wait_text(&mut self, selector: &str, text: &str) -> String {
        let v = self.call(
            "waitText",
            json!({ "selector": selector, "text": text, "timeoutMs": 30_000 }),
        );
        v.as_str().unwrap_or_default().to_string()
    }

    pub fn count(&mut self, selector: &str) -> u64 {
        self.call("count", json!({ "selector": selector }))
            .as_u64()
            .unwrap_or(0)
    }

    pub fn click(&mut self, selector: &str) {
        self.call("click", json!({ "selector": selector }));
    }

    pub fn eval(&mut self, expression: &str) -> Value {
        self.call("eval", json!({ "expression": expression }))
    }

    /// `fetch` run in the page (so with its Origin and cookies): `(status, body)`.
    pub fn fetch(&mut self, url: &str, method: &str, body: &str) -> (u64, String) {
        let v = self.call(
            "fetch",
            json!({ "url": url, "method": method, "body": body,
                    "headers": { "Content-Type": "application/json" } }),
        );
        (
            v["status"].as_u64().unwrap_or(0),
            v["body"].as_str().unwrap_or_default().to_string(),
        )
    }

    pub fn screenshot(&mut self, path: &std::path::Path) {
        self.call(
            "screenshot",
            json!({ "path": path.display().to_string(), "fullPage": true }),
        );
    }

    /// Errors the page logged or threw so far.
    pub fn console_errors(&mut self) -> Vec<String> {
        let v = self.call("consoleErrors", json!({}));
        serde_json::from_value(v).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "close", "id": 0}));
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // polling the exit, not a sync stand-in
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
