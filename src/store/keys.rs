//! The key layout in the store. Nothing outside `src/store/` builds keys.
//!
//! ```text
//! /deployctl/<plural>/<namespace>/<name>            metadata + spec
//! /deployctl/<plural>/<name>                        (cluster-scoped: machines)
//! /deployctl/status/<plural>/<namespace>/<name>     status
//! /deployctl/instances/<machine>/<namespace>/<app>  instance spec   (agent: read)
//! /deployctl/status/instances/<machine>/<ns>/<app>  instance status (agent: write)
//! /deployctl/leases/machines/<machine>              bound to the agent's lease
//! /deployctl/leases/controller                      the leader's key, bound to its lease
//! /deployctl/logs/<machine>/requests/<id>           a `logs` request, on the CLI's lease
//! /deployctl/logs/<machine>/answers/<id>/<seq>      its answer chunks, on the same lease
//! /deployctl/taskorders/<machine>/<ns>/<task>        a Task's order to one machine (agent: read)
//! /deployctl/status/taskorders/<machine>/<ns>/<task> its result (agent: write)
//! ```

pub const ROOT: &str = "/deployctl/";

/// Identifies one object in the store, independent of its kind's layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

/// Instance names are `<app>.<machine>`; keys group instances by machine so that an
/// agent can watch (and be granted) exactly its own prefix.
fn instance_parts(namespace: &str, name: &str) -> Option<(String, String)> {
    let (app, machine) = name.split_once('.')?;
    Some((machine.to_string(), format!("{namespace}/{app}")))
}

/// The spec key of an object.
pub fn spec_key(plural: &str, namespace: Option<&str>, name: &str) -> String {
    if plural == "instances" {
        if let Some((machine, rest)) = instance_parts(namespace.unwrap_or("default"), name) {
            return format!("{ROOT}instances/{machine}/{rest}");
        }
    }
    match namespace {
        Some(ns) => format!("{ROOT}{plural}/{ns}/{name}"),
        None => format!("{ROOT}{plural}/{name}"),
    }
}

/// The status key of an object.
pub fn status_key(plural: &str, namespace: Option<&str>, name: &str) -> String {
    let spec = spec_key(plural, namespace, name);
    format!("{ROOT}status/{}", &spec[ROOT.len()..])
}

/// The prefix holding the spec keys of a kind, in one namespace or all.
pub fn spec_prefix(plural: &str, namespace: Option<&str>) -> String {
    match namespace {
        // Instances are grouped by machine, so a namespace filter cannot be a prefix.
        Some(ns) if plural != "instances" => format!("{ROOT}{plural}/{ns}/"),
        _ => format!("{ROOT}{plural}/"),
    }
}

/// The prefix holding the status keys of a kind.
pub fn status_prefix(plural: &str, namespace: Option<&str>) -> String {
    let spec = spec_prefix(plural, namespace);
    format!("{ROOT}status/{}", &spec[ROOT.len()..])
}

/// The instance spec keys of one machine: all an agent watches.
pub fn machine_instances_prefix(machine: &str) -> String {
    format!("{ROOT}instances/{machine}/")
}

/// The instance status keys of one machine: all an agent writes.
pub fn machine_instance_status_prefix(machine: &str) -> String {
    format!("{ROOT}status/instances/{machine}/")
}

/// The Task orders to one machine: all its agent watches for `deployctl run`.
pub fn task_orders_prefix(machine: &str) -> String {
    format!("{ROOT}taskorders/{machine}/")
}

/// One Task's order to one machine, written by the controller.
pub fn task_order_key(machine: &str, namespace: &str, task: &str) -> String {
    format!("{}{namespace}/{task}", task_orders_prefix(machine))
}

/// The Task results of one machine: the agent's role may write this prefix only.
pub fn task_results_prefix(machine: &str) -> String {
    format!("{ROOT}status/taskorders/{machine}/")
}

/// One machine's result for one Task, written by its agent.
pub fn task_result_key(machine: &str, namespace: &str, task: &str) -> String {
    format!("{}{namespace}/{task}", task_results_prefix(machine))
}

/// Every machine's Task orders: what the controller sweeps for orphans at start.
pub fn task_orders_root() -> String {
    format!("{ROOT}taskorders/")
}

/// The (machine, namespace, task) of a key under [`task_orders_root`].
pub fn parse_task_order_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(&task_orders_root())?;
    let mut parts = rest.split('/');
    let (m, ns, task) = (parts.next()?, parts.next()?, parts.next()?);
    let whole = parts.next().is_none() && !m.is_empty() && !ns.is_empty() && !task.is_empty();
    whole.then_some((m, ns, task))
}

/// Every machine's Task results: what the controller watches to learn of ends.
pub fn task_results_root() -> String {
    format!("{ROOT}status/taskorders/")
}

/// The (machine, namespace, task) of a key under [`task_results_root`].
pub fn parse_task_result_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(&task_results_root())?;
    let mut parts = rest.split('/');
    let (m, ns, task) = (parts.next()?, parts.next()?, parts.next()?);
    let whole = parts.next().is_none() && !m.is_empty() && !ns.is_empty() && !task.is_empty();
    whole.then_some((m, ns, task))
}

/// The (namespace, task) of a key under [`task_orders_prefix`] or [`task_results_prefix`]
/// of `machine`.
pub fn parse_task_key<'a>(machine: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key
        .strip_prefix(&task_orders_prefix(machine))
        .or_else(|| key.strip_prefix(&task_results_prefix(machine)))?;
    let (ns, task) = rest.split_once('/')?;
    (!ns.is_empty() && !task.is_empty() && !task.contains('/')).then_some((ns, task))
}

/// The presence key of a machine, bound to its agent's lease.
pub fn machine_lease_key(machine: &str) -> String {
    format!("{ROOT}leases/machines/{machine}")
}

pub fn machine_leases_prefix() -> String {
    format!("{ROOT}leases/machines/")
}

/// The key the leading controller holds, bound to its lease; its writes are fenced on it.
pub fn leader_key() -> String {
    format!("{ROOT}leases/controller")
}

/// Everything of one machine's log requests and answers: the agent's role may read and
/// write this prefix, and no other machine's.
pub fn machine_logs_prefix(machine: &str) -> String {
    format!("{ROOT}logs/{machine}/")
}

/// The log requests to one machine: all its agent watches for `deployctl logs`.
pub fn log_requests_prefix(machine: &str) -> String {
    format!("{}requests/", machine_logs_prefix(machine))
}

/// One log request; `id` is a fresh random word of the requester's.
pub fn log_request_key(machine: &str, id: &str) -> String {
    format!("{}{id}", log_requests_prefix(machine))
}

/// The answer chunks to one request.
pub fn log_answers_prefix(machine: &str, id: &str) -> String {
    format!("{}answers/{id}/", machine_logs_prefix(machine))
}

/// One answer chunk; `seq` is zero-padded so that chunks sort in the order written.
pub fn log_answer_key(machine: &str, id: &str, seq: u64) -> String {
    format!("{}{seq:012}", log_answers_prefix(machine, id))
}

/// The request id of a key under [`log_requests_prefix`] of `machine`.
pub fn parse_log_request_key<'a>(machine: &str, key: &'a str) -> Option<&'a str> {
    let id = key.strip_prefix(&log_requests_prefix(machine))?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Parses a spec or status key back to the object it belongs to.
pub fn parse_key(plural: &str, key: &str) -> Option<ObjectKey> {
    let rest = key
        .strip_prefix(ROOT)?
        .strip_prefix("status/")
        .or_else(|| key.strip_prefix(ROOT))?;
    let rest = rest.strip_prefix(plural)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match (plural, parts.as_slice()) {
        ("instances", [machine, ns, app]) => Some(ObjectKey {
            namespace: Some(ns.to_string()),
            name: format!("{app}.{machine}"),
        }),
        (_, [ns, name]) => Some(ObjectKey {
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        (_, [name]) => Some(ObjectKey {
            namespace: None,
            name: name.to_string(),
        }),
        _ => None,
    }
}

/// True for status keys.
pub fn is_status_key(key: &str) -> bool {
    key.starts_with(&format!("{ROOT}status/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_should_follow_the_documented_layout() {
        assert_eq!(
            spec_key("rollouts", Some("default"), "api"),
            "/deployctl/rollouts/default/api"
        );
        assert_eq!(
            status_key("rollouts", Some("default"), "api"),
            "/deployctl/status/rollouts/default/api"
        );
        assert_eq!(spec_key("machines", None, "m1"), "/deployctl/machines/m1");
        assert_eq!(
            spec_key("instances", Some("prod"), "api.m1"),
            "/deployctl/instances/m1/prod/api"
        );
        assert_eq!(
            status_key("instances", Some("prod"), "api.m1"),
            "/deployctl/status/instances/m1/prod/api"
        );
    }

    #[test]
    fn log_keys_should_stay_under_the_machines_own_prefix_and_sort_chunks_in_order() {
        let prefix = machine_logs_prefix("web-1");
        assert_eq!(prefix, "/deployctl/logs/web-1/");
        let request = log_request_key("web-1", "ab12");
        assert_eq!(request, "/deployctl/logs/web-1/requests/ab12");
        assert_eq!(parse_log_request_key("web-1", &request), Some("ab12"));
        assert_eq!(parse_log_request_key("web-2", &request), None);
        assert_eq!(
            parse_log_request_key("web-1", "/deployctl/logs/web-1/requests/a/b"),
            None
        );
        assert_eq!(
            log_answer_key("web-1", "ab12", 7),
            "/deployctl/logs/web-1/answers/ab12/000000000007"
        );
        assert!(log_answer_key("web-1", "ab12", 9) < log_answer_key("web-1", "ab12", 10));
        for key in [request, log_answer_key("web-1", "ab12", 0)] {
            assert!(key.starts_with(&prefix), "{key}");
            assert!(!key.starts_with(&machine_logs_prefix("web-10")), "{key}");
        }
        // Another machine whose name extends this one's never shares its prefix.
        assert!(!log_request_key("web-10", "x").starts_with(&prefix));
    }

    #[test]
    fn task_keys_should_stay_under_the_machines_own_prefixes_and_parse_back() {
        let order = task_order_key("m1", "default", "run-1");
        let result = task_result_key("m1", "default", "run-1");
        assert_eq!(order, "/deployctl/taskorders/m1/default/run-1");
        assert_eq!(result, "/deployctl/status/taskorders/m1/default/run-1");
        assert!(order.starts_with(&task_orders_prefix("m1")));
        assert!(result.starts_with(&task_results_prefix("m1")));
        // A machine whose name extends another's never sees the other's orders.
        assert!(!task_order_key("m10", "default", "t").starts_with(&task_orders_prefix("m1")));
        assert_eq!(parse_task_key("m1", &order), Some(("default", "run-1")));
        assert_eq!(parse_task_key("m1", &result), Some(("default", "run-1")));
        assert_eq!(parse_task_key("m2", &order), None);
        assert_eq!(
            parse_task_key("m1", "/deployctl/taskorders/m1/default/"),
            None
        );
        assert_eq!(parse_task_key("m1", "/deployctl/taskorders/m1/a/b/c"), None);
        assert_eq!(
            parse_task_result_key(&result),
            Some(("m1", "default", "run-1"))
        );
        assert_eq!(parse_task_result_key(&order), None);
        assert_eq!(
            parse_task_order_key(&order),
            Some(("m1", "default", "run-1"))
        );
        assert_eq!(parse_task_order_key(&result), None);
    }

    #[test]
    fn keys_should_parse_back_to_their_object() {
        for (plural, ns, name) in [
            ("rollouts", Some("default"), "api"),
            ("machines", None, "m1"),
            ("instances", Some("prod"), "api.m-1"),
        ] {
            let want = ObjectKey {
                namespace: ns.map(str::to_string),
                name: name.to_string(),
            };
            assert_eq!(
                parse_key(plural, &spec_key(plural, ns, name)),
                Some(want.clone())
            );
            assert_eq!(parse_key(plural, &status_key(plural, ns, name)), Some(want));
        }
    }
}
