//! One client's Server-Sent Events stream: the rows of one page's table, then what
//! changed after each flush of the model.
//!
//! Each message is an SSE event `rows` whose data is
//! `{"seq":N,"reset":bool,"upsert":[[key,row],...],"delete":[key,...]}`: `reset` tells
//! the page to drop what it holds first (its first message, or after it fell behind).
//! A comment line every [`PING_INTERVAL`] keeps proxies from closing an idle stream and
//! lets the server notice a client that went away. A stream ends after
//! [`STREAM_LIFETIME`]; the browser's `EventSource` then reconnects and starts afresh.

use super::model::{Diff, Model, Topic, ViewGuard};
use futures::Stream;
use hyper::body::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an idle stream sends a comment.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// How long one stream lasts before the browser is asked to reconnect.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Rows per SSE event: a page of 10,000 machines arrives as 20 events, not one.
const ROWS_PER_EVENT: usize = 500;

struct State {
    model: Arc<Model>,
    topic: Topic,
    cursor: Option<u64>,
    published: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    shutdown: CancellationToken,
    /// Held for the stream's life: the page's table, and the client's place in the cap.
    _view: ViewGuard,
    _permit: super::StreamSlot,
    done: bool,
}

/// The stream of SSE bytes for `topic`, until the client goes, the lifetime ends or
/// `shutdown`.
pub fn events(
    model: Arc<Model>,
    topic: Topic,
    permit: super::StreamSlot,
    shutdown: CancellationToken,
) -> impl Stream<Item = Bytes> + Send {
    let view = model.view(&topic);
    let state = State {
        published: model.subscribe(),
        model,
        topic,
        cursor: None,
        deadline: tokio::time::Instant::now() + STREAM_LIFETIME,
        shutdown,
        _view: view,
        _permit: permit,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            // Mark the current flush seen before reading the diff, so a flush in between
            // wakes us again rather than being missed.
            s.published.borrow_and_update();
            if let Some((diff, seq)) = s.model.diff(&s.topic, s.cursor) {
                if !diff.is_empty() || s.cursor.is_none() {
                    s.cursor = Some(seq);
                    return Some((encode(&diff, seq), s));
                }
            }
            tokio::select! {
                _ = s.shutdown.cancelled() => return None,
                _ = tokio::time::sleep_until(s.deadline) => {
                    s.done = true;
                    return Some((Bytes::from_static(b"retry: 1000\n\n"), s));
                }
                _ = tokio::time::sleep(PING_INTERVAL) => {
                    return Some((Bytes::from_static(b": ping\n\n"), s));
                }
                changed = s.published.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    })
}

/// A diff as SSE `rows` events of at most [`ROWS_PER_EVENT`] rows each; only the first
/// carries `reset`, only the last the deletions.
pub fn encode(diff: &Diff, seq: u64) -> Bytes {
    let mut out = String::new();
    let chunks: Vec<&[(String, Arc<str>)]> = if diff.upsert.is_empty() {
        vec![&[]]
    } else {
        diff.upsert.chunks(ROWS_PER_EVENT).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let reset = diff.reset && i == 0;
        out.push_str("event: rows\ndata: {\"seq\":");
        out.push_str(&seq.to_string());
        out.push_str(",\"reset\":");
        out.push_str(if reset { "true" } else { "false" });
        out.push_str(",\"upsert\":[");
        for (k, (key, row)) in chunk.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push('[');
            out.push_str(&serde_json::Value::from(key.as_str()).to_string());
            out.push(',');
            out.push_str(row);
            out.push(']');
        }
        out.push_str("],\"delete\":");
        let delete: &[String] = if i == last { &diff.delete } else { &[] };
        out.push_str(&serde_json::to_string(delete).expect("strings serialize"));
        // serde_json never writes a raw line break, so the data is one SSE line.
        out.push_str("}\n\n");
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_diff_should_be_split_into_events_each_one_line_of_json() {
        let rows: Vec<(String, Arc<str>)> = (0..1_200)
            .map(|i| {
                (
                    format!("m{i}\n<x>"),
                    Arc::from(format!("{{\"n\":{i}}}").as_str()),
                )
            })
            .collect();
        let diff = Diff {
            reset: true,
            upsert: rows,
            delete: vec!["gone".into()],
        };
        let text = String::from_utf8(encode(&diff, 7).to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "1,200 rows in events of 500");
        let mut seen = 0;
        for (i, e) in events.iter().enumerate() {
            let lines: Vec<&str> = e.lines().collect();
            assert_eq!(lines.len(), 2, "event and one data line: {e:.80}");
            let v: serde_json::Value =
                serde_json::from_str(lines[1].strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["reset"], i == 0);
            assert_eq!(v["seq"], 7);
            seen += v["upsert"].as_array().unwrap().len();
            let deletes = v["delete"].as_array().unwrap().len();
            assert_eq!(deletes, usize::from(i == 2));
        }
        assert_eq!(seen, 1_200);
    }
}
