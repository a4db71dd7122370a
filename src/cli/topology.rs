//! How waves and `dependsOn` read in the live view and `describe`: one line each.

use crate::api::Rollout;
use crate::reconcilers::rollout::human_seconds;
use chrono::{DateTime, Utc};

/// The waves in switch order, e.g. `zone: a done, b baking 4m left (2/2), c waiting (0/2)`;
/// `None` without `strategy.waves`. The status's waves when it has them for the target,
/// else the configured order.
pub fn waves_line(r: &Rollout, now: DateTime<Utc>) -> Option<String> {
    let waves = r.spec.strategy.waves.as_ref()?;
    let st = r.status.as_ref();
    let target = st.and_then(|s| s.target_version.as_deref());
    let entries: Vec<String> = match st.filter(|s| !s.waves.is_empty()) {
        Some(s) => s
            .waves
            .iter()
            .map(|w| {
                let name = if w.value.is_empty() {
                    "(no label)"
                } else {
                    w.value.as_str()
                };
                let stale = Some(w.version.as_str()) != target;
                let state = match w.phase.as_str() {
                    _ if stale => "waiting".to_string(),
                    "Done" => "done".to_string(),
                    "Baking" => {
                        let left = w.bake_until.map_or(0, |u| (u - now).num_seconds().max(0));
                        format!("baking {} left", human_seconds(left))
                    }
                    "Switching" => "current".to_string(),
                    "Refused" => "refused: no label".to_string(),
                    _ => "waiting".to_string(),
                };
                format!("{name} {state} ({}/{})", w.available, w.machines)
            })
            .collect(),
        None if waves.order.is_empty() => vec!["by sorted value".to_string()],
        None => waves.order.clone(),
    };
    let bake = waves
        .bake
        .as_deref()
        .map(|b| format!(" [bake {b}]"))
        .unwrap_or_default();
    Some(format!("{}: {}{bake}", waves.label_key, entries.join(", ")))
}

/// `api, ns/db`: the Rollouts this one depends on; `None` without any.
pub fn depends_line(r: &Rollout) -> Option<String> {
    if r.spec.depends_on.is_empty() {
        return None;
    }
    Some(
        r.spec
            .depends_on
            .iter()
            .map(|d| match &d.namespace {
                Some(ns) => format!("{ns}/{}", d.rollout),
                None => d.rollout.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Object, RolloutSpec, RolloutStatus, WaveStatus, Waves};

    fn wave(value: &str, phase: &str, available: u32, until: Option<DateTime<Utc>>) -> WaveStatus {
        WaveStatus {
            value: value.into(),
            version: "2.0".into(),
            phase: phase.into(),
            machines: 2,
            available,
            done_at: None,
            bake_until: until,
        }
    }

    #[test]
    fn the_waves_line_should_show_done_baking_with_time_left_current_and_waiting() {
        let now = Utc::now();
        let mut r = Rollout::new("web", RolloutSpec::default());
        r.spec.strategy.waves = Some(Waves {
            label_key: "zone".into(),
            order: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            bake: Some("10m".into()),
            ..Default::default()
        });
        assert_eq!(
            waves_line(&r, now).as_deref(),
            Some("zone: a, b, c, d [bake 10m]")
        );
        r.status = Some(RolloutStatus {
            target_version: Some("2.0".into()),
            waves: vec![
                wave("a", "Done", 2, None),
                wave("b", "Baking", 2, Some(now + chrono::Duration::seconds(245))),
                wave("c", "Switching", 1, None),
                wave("d", "Waiting", 0, None),
            ],
            ..Default::default()
        });
        assert_eq!(
            waves_line(&r, now).as_deref(),
            Some("zone: a done (2/2), b baking 4m left (2/2), c current (1/2), d waiting (0/2) [bake 10m]")
        );
    }
}
