//! The live rollout view (`get rollout[s] -w`) fed by a real store: it draws the first
//! state, then a new block for each change to the Rollout and to its Instances.

use deployctl::api::*;
use deployctl::cli::view::{watch_into, Screen, Style, WatchOptions};
use deployctl::store::{Client, Scope, StoreUrl};
use deployctl::testing::EtcdServer;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A writer the test can read while the view writes to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("no writer panics while holding the lock")
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .expect("no writer panics while holding the lock");
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Polls until the output contains `needle`, failing with the output after 10 s.
    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the view never showed {needle:?}; it printed:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn options(names: &[&str]) -> WatchOptions {
    WatchOptions {
        scope: Scope::Namespace("default".into()),
        names: names.iter().map(|n| n.to_string()).collect(),
        selector: Default::default(),
        all_namespaces: false,
        no_color: false,
    }
}

/// Starts a view on its own task; dropping the returned sender stops it.
fn start(
    client: &Client,
    opts: WatchOptions,
    terminal: bool,
    style: Style,
) -> (
    Captured,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<i32>>,
) {
    let out = Captured::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = client.clone();
    let screen = Screen {
        out: out.clone(),
        terminal,
        style,
    };
    let task = tokio::spawn(async move {
        watch_into(&client, &opts, screen, async {
            let _ = stopped.await;
        })
        .await
    });
    (out, stop, task)
}

async fn stop(
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<i32>>,
) {
    drop(stop);
    let code = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the view stops when asked")
        .expect("the view task does not panic")
        .expect("the view ends without error");
    assert_eq!(code, 0);
}

fn instance(machine: &str) -> Instance {
    Instance::new(
        &Instance::name_for("api", machine),
        InstanceSpec {
            machine: machine.into(),
            application: "api".into(),
            artifact: Artifact {
                url: "file:///nowhere/{{version}}.tar.gz".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
}

async fn view_should_follow_a_rollout_and_its_machines(url: StoreUrl) {
    let client = Client::new(url.connect().await.expect("the test store opens"));
    let rollout = Rollout::new(
        "api",
        RolloutSpec {
            application: "api".into(),
            version: "2.0".into(),
            ..Default::default()
        },
    );
    let created = client.create(&rollout).await.expect("create rollout");

    let (one, stop_one, task_one) = start(&client, options(&["api"]), false, Style::PLAIN);
    let (all, stop_all, task_all) = start(&client, options(&[]), false, Style::PLAIN);
    one.wait_for("Status:        ◌ Pending").await;
    all.wait_for("api    ◌ Pending").await;

    // A machine appears under the rollout, then reports a failure.
    let inst = client
        .create(&instance("web-1"))
        .await
        .expect("create instance");
    one.wait_for("└──□ web-1   ◌ Pending   no status yet").await;
    let mut failed = inst.clone();
    failed.status = Some(InstanceStatus {
        phase: InstancePhase::Failed,
        failure: Some(InstanceFailure {
            version: "2.0".into(),
            operation: "Stage".into(),
            reason: "ChecksumMismatch".into(),
            message: "sha256 abc != def".into(),
            time: chrono::Utc::now(),
        }),
        ..Default::default()
    });
    client
        .replace_status(&failed)
        .await
        .expect("write instance status");
    one.wait_for("└──□ web-1   ✖ Failed    Stage 2.0 failed: ChecksumMismatch: sha256 abc != def")
        .await;

    // Its Machine's agent lease expires: the tree says the machine is not counted, and why.
    let machine = client
        .create(&Machine::new("web-1", MachineSpec::default()))
        .await
        .expect("create machine");
    let mut dead = machine.clone();
    let mut st = MachineStatus::default();
    set_condition(
        &mut st.conditions,
        "Ready",
        ConditionStatus::False,
        "AgentLeaseExpired",
        "the agent's lease expired: it stopped or lost the store",
        chrono::Utc::now(),
    );
    dead.status = Some(st);
    client
        .replace_status(&dead)
        .await
        .expect("write machine status");
    one.wait_for("└──□ web-1   ✖ NotReady   not counted: NotReady: agent lease expired")
        .await;

    // The controller's status shows as phase, gate and counts.
    let mut progressing = created.clone();
    progressing.status = Some(RolloutStatus {
        phase: RolloutPhase::Progressing,
        message: "waiting for staged 0/1 (minStaged) before any switch".into(),
        target_version: Some("2.0".into()),
        desired: 1,
        ..Default::default()
    });
    client
        .replace_status(&progressing)
        .await
        .expect("write rollout status");
    one.wait_for("  Gate:        waiting for staged 0/1").await;
    all.wait_for("waiting for staged 0/1   1").await;

    // Plain output: one block per change, no escape codes, no block printed twice running.
    for out in [&one, &all] {
        let text = out.text();
        assert!(
            !text.contains('\x1b'),
            "escape codes off a terminal:\n{text}"
        );
        let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
        assert!(blocks.len() >= 2, "one block per change:\n{text}");
        assert!(
            blocks.windows(2).all(|w| w[0] != w[1]),
            "a block repeated without a change:\n{text}"
        );
    }
    stop(stop_one, task_one).await;
    stop(stop_all, task_all).await;

    // On a terminal: cleared once, then redrawn from the corner, in colour.
    let (tty, stop_tty, task_tty) = start(&client, options(&[]), true, Style::COLOR);
    tty.wait_for("\x1b[33m◌ Progressing\x1b[0m").await;
    let text = tty.text();
    assert!(text.starts_with("\x1b[2J\x1b[H"), "{text:?}");
    assert!(
        text.contains("\x1b[K\n") && text.ends_with("\x1b[J"),
        "{text:?}"
    );
    stop(stop_tty, task_tty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_view_should_follow_a_rollout_and_its_machines() {
    let dir = tempfile::tempdir().expect("a temp dir");
    view_should_follow_a_rollout_and_its_machines(StoreUrl::Embedded(dir.path().join("store.db")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_view_should_follow_a_rollout_and_its_machines() {
    let etcd = EtcdServer::start();
    let url = StoreUrl::parse(Some(&etcd.url())).expect("the harness gives a valid url");
    view_should_follow_a_rollout_and_its_machines(url).await;
}
