//! `deployctl get`: tables, `-o yaml|json|name`, and `-w` to follow changes.

use super::output::{self, Columns, Fleet};
use super::template::{self, SortKey};
use super::{connect, for_kind, parse_kind, within, CliError, GlobalArgs, OutputFormat};
use crate::api::selector::LabelSelector;
use crate::api::{KindName, Machine, Object};
use crate::store::{Client, ObjectEvent, Scope};
use chrono::Utc;
use clap::Args;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};

pub const EXAMPLES: &str = "\
Examples:
  # Every rollout in the current namespace, then with more columns
  deployctl get rollouts
  deployctl get ro -o wide

  # One object as YAML (apply accepts it back)
  deployctl get rollout api -o yaml

  # Rollouts live: status symbol, step, gate and counts; one with its machines
  deployctl get rollouts -w
  deployctl get rollout api -w

  # Machines with a label, in every namespace, following changes
  deployctl get machines -l role=web -w

  # Instances of every namespace, names only
  deployctl get instances -A -o name

  # Fields for a script, as kubectl's jsonpath and custom-columns print them
  deployctl get ro -o \\
    jsonpath='{range .items[*]}{.metadata.name}{\"\\t\"}{.spec.version}{\"\\n\"}{end}'
  deployctl get ro -o custom-columns=NAME:.metadata.name,VERSION:.spec.version

  # Several kinds, one object by KIND/NAME, oldest first, labels as columns
  deployctl get ro,app
  deployctl get ro/api app/api
  deployctl get all --sort-by=.metadata.creationTimestamp
  deployctl get machines --show-labels -L role

  # Into a pipe: the header once, then one row per change
  deployctl get ro -w | tee rollouts.log";

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to list: a kind (machines (mc), applications (app), rollouts (ro), instances
    /// (inst), events (ev), syncs, notifiers (nt), tasks (tk)), several joined by commas
    /// (`ro,app`), `all` (applications, rollouts, instances, tasks, syncs, notifiers), or
    /// KIND/NAME.
    #[arg(value_name = "KIND[/NAME]")]
    pub kind: String,
    /// Only these objects (NAME, or KIND/NAME when the first argument is KIND/NAME).
    pub names: Vec<String>,
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-joined.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// List across every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: wide, yaml, json, name, jsonpath=TEMPLATE (kubectl's: `{.items[*].metadata.name}`,
    /// `{range .items[*]}{.metadata.name}{"\n"}{end}`), custom-columns=NAME:PATH,...
    #[arg(short = 'o', long, value_parser = OutputFormat::parse, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// After listing, print every change until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Print only the changes, not the first listing (implies --watch).
    #[arg(long)]
    pub watch_only: bool,
    /// Print tables without the header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Sort by the value at a JSONPath (`.metadata.creationTimestamp`, `{.status.available}`).
    #[arg(long, value_name = "JSONPATH", value_parser = parse_sort_key)]
    pub sort_by: Option<std::sync::Arc<SortKey>>,
    /// Show every label as the last column of a table.
    #[arg(long)]
    pub show_labels: bool,
    /// A column with the value of each of these label keys (repeat or comma-join).
    #[arg(
        short = 'L',
        long = "label-columns",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub label_columns: Vec<String>,
    /// No colour in the live rollout view (`NO_COLOR` works too).
    #[arg(long)]
    pub no_color: bool,
}

fn parse_sort_key(text: &str) -> Result<std::sync::Arc<SortKey>, String> {
    SortKey::parse(text)
        .map(std::sync::Arc::new)
        .map_err(|e| e.to_string())
}

/// Why `get`'s arguments were refused.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'deployctl get rollout/api' instead of 'deployctl get rollout rollout/api')")]
    MixedForms,
    #[error("argument {0:?} is not KIND/NAME")]
    NotKindName(String),
    #[error("watch is only supported on one kind at a time, not {0}")]
    WatchSeveralKinds(String),
}

/// The kinds `get all` lists: the namespaced objects a user works with (no Machines,
/// which are cluster-wide, and no Events, as kubectl's `all` leaves them out).
const ALL_KINDS: [KindName; 6] = [
    KindName::Application,
    KindName::Rollout,
    KindName::Instance,
    KindName::Task,
    KindName::Sync,
    KindName::Notifier,
];

/// The kinds and names the positional arguments ask for, in the order given.
fn targets(kind: &str, names: &[String]) -> anyhow::Result<Vec<(KindName, Vec<String>)>> {
    if kind.contains('/') {
        let mut out: Vec<(KindName, Vec<String>)> = Vec::new();
        for arg in std::iter::once(kind).chain(names.iter().map(String::as_str)) {
            let (k, n) = arg
                .split_once('/')
                .filter(|(k, n)| !k.is_empty() && !n.is_empty())
                .ok_or_else(|| GetError::NotKindName(arg.to_string()))?;
            let k = parse_kind(k)?;
            match out.iter_mut().find(|(seen, _)| *seen == k) {
                Some((_, list)) => list.push(n.to_string()),
                None => out.push((k, vec![n.to_string()])),
            }
        }
        return Ok(out);
    }
    if names.iter().any(|n| n.contains('/')) {
        return Err(GetError::MixedForms.into());
    }
    let mut kinds: Vec<KindName> = Vec::new();
    for word in kind.split(',').filter(|w| !w.is_empty()) {
        let more: Vec<KindName> = if word.eq_ignore_ascii_case("all") {
            ALL_KINDS.to_vec()
        } else {
            vec![parse_kind(word)?]
        };
        for k in more {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
    }
    if kinds.is_empty() {
        return Err(super::CliError::UnknownKind(kind.to_string()).into());
    }
    Ok(kinds.into_iter().map(|k| (k, names.to_vec())).collect())
}

/// What `get` prints, decided once from the flags.
struct View {
    format: Option<OutputFormat>,
    all_namespaces: bool,
    no_headers: bool,
    selector: LabelSelector,
    names: Vec<String>,
    sort_by: Option<std::sync::Arc<SortKey>>,
    show_labels: bool,
    label_columns: Vec<String>,
    /// Several kinds in one listing: NAME cells say `kind.group/name`, as kubectl's do.
    several_kinds: bool,
    /// The Machines, read once when the rows say whether their machine counts (the
    /// Instances' NOTE); empty otherwise. `-w` does not follow them.
    machines: BTreeMap<String, Machine>,
}

impl View {
    /// What rows are drawn against now.
    fn fleet(&self) -> Fleet {
        Fleet {
            now: Utc::now(),
            machines: self.machines.clone(),
        }
    }

    fn wide(&self) -> bool {
        matches!(self.format, Some(OutputFormat::Wide))
    }

    /// The format draws the kind's own table.
    fn table(&self) -> bool {
        matches!(self.format, None | Some(OutputFormat::Wide))
    }

    fn wants<K: Object>(&self, obj: &K) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| n == obj.name()))
            && self.selector.matches(&obj.meta().labels)
    }

    /// The header of the kind's table, with NAMESPACE, `-L` and `--show-labels` columns.
    fn headers<K: Columns>(&self) -> Vec<String> {
        let mut h: Vec<String> = output::table_headers::<K>(self.wide(), self.all_namespaces)
            .into_iter()
            .map(String::from)
            .collect();
        for key in &self.label_columns {
            let last = key.rsplit('/').next().unwrap_or(key);
            h.push(last.to_uppercase());
        }
        if self.show_labels {
            h.push("LABELS".into());
        }
        h
    }

    /// The rows of the kind's table for `items`, with the columns of [`View::headers`].
    fn rows<K: Columns>(&self, items: &[K]) -> Vec<Vec<String>> {
        let name_col = output::table_headers::<K>(self.wide(), self.all_namespaces)
            .iter()
            .position(|h| *h == "NAME");
        let rows = output::table_rows(items, self.wide(), self.all_namespaces, &self.fleet());
        rows.into_iter()
            .zip(items)
            .map(|(mut r, o)| {
                if let (true, Some(i)) = (self.several_kinds, name_col) {
                    r[i] = output::escape(&format!("{}/{}", kind_word(K::KIND_NAME), o.name()))
                        .into_owned();
                }
                let labels = &o.meta().labels;
                for key in &self.label_columns {
                    r.push(output::escape(labels.get(key).map_or("", String::as_str)).into_owned());
                }
                if self.show_labels {
                    r.push(output::escape(&output::labels_text(labels)).into_owned());
                }
                r
            })
            .collect()
    }

    /// `items` in `--sort-by` order, or as given.
    fn sorted<K: Columns>(&self, items: Vec<K>) -> anyhow::Result<Vec<K>> {
        let Some(key) = &self.sort_by else {
            return Ok(items);
        };
        let mut pairs = items
            .into_iter()
            .map(|o| Ok((serde_json::to_value(&o)?, o)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        key.sort(&mut pairs);
        Ok(pairs.into_iter().map(|(_, o)| o).collect())
    }
}

/// `rollout.deployctl.dev`: how a NAME cell names its kind when several are listed.
fn kind_word(kind: KindName) -> String {
    format!("{}.{}", kind.singular(), crate::api::GROUP)
}

pub async fn run(g: &GlobalArgs, args: GetArgs) -> anyhow::Result<i32> {
    let targets = targets(&args.kind, &args.names)?;
    let watching = args.watch || args.watch_only;
    if watching && targets.len() > 1 {
        let kinds: Vec<&str> = targets.iter().map(|(k, _)| k.plural()).collect();
        return Err(GetError::WatchSeveralKinds(kinds.join(",")).into());
    }
    let selector = match &args.selector {
        Some(s) => LabelSelector::parse(s).map_err(anyhow::Error::msg)?,
        None => LabelSelector::default(),
    };
    let mut view = View {
        format: args.output.clone(),
        all_namespaces: args.all_namespaces,
        no_headers: args.no_headers,
        selector,
        names: Vec::new(),
        sort_by: args.sort_by.clone(),
        show_labels: args.show_labels,
        label_columns: args.label_columns.clone(),
        several_kinds: targets.len() > 1,
        machines: BTreeMap::new(),
    };
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(g.namespace.clone())
    };
    let client = connect(g).await?;
    if targets.iter().any(|(k, _)| *k == KindName::Instance) && view.table() {
        let listed = within(g, client.list::<Machine>(&Scope::All)).await?;
        view.machines = listed
            .items
            .into_iter()
            .map(|m| (m.name().to_string(), m))
            .collect();
    }
    if watching {
        let (kind, names) = targets
            .into_iter()
            .next()
            .expect("targets() returns at least one kind");
        view.names = names;
        view.all_namespaces = args.all_namespaces && kind.namespaced();
        if live_view_wanted(kind, &args, &view) {
            let opts = super::view::WatchOptions {
                scope,
                names: view.names,
                selector: view.selector,
                all_namespaces: view.all_namespaces,
                no_color: args.no_color,
            };
            return super::view::watch(&client, opts).await;
        }
        return for_kind!(kind, K => watch::<K>(&client, scope, &view, args.watch_only).await);
    }
    let mut sections = Vec::new();
    let mut missing: Vec<CliError> = Vec::new();
    // Every name asked for, of any kind: one prints the object itself, not a List.
    let all_names: Vec<String> = targets.iter().flat_map(|(_, n)| n.clone()).collect();
    for (kind, names) in targets {
        view.names = names;
        view.all_namespaces = args.all_namespaces && kind.namespaced();
        let section =
            for_kind!(kind, K => list::<K>(g, &client, &scope, &view, &mut missing).await)?;
        sections.push(section);
    }
    view.names = all_names;
    print_sections(&sections, &view)?;
    let nothing = sections.iter().all(|s| s.values.is_empty());
    if nothing
        && missing.is_empty()
        && !matches!(
            view.format,
            Some(OutputFormat::Yaml | OutputFormat::Json | OutputFormat::JsonPath(_))
        )
    {
        let kind = sections
            .first()
            .map(|s| s.kind)
            .unwrap_or(KindName::Rollout);
        eprintln!("No resources found{}.", scope_words(kind, &scope));
    }
    let Some(last) = missing.pop() else {
        return Ok(0);
    };
    for e in missing {
        eprintln!("{}", output::escape(&e.to_string()));
    }
    Err(last.into())
}

/// Rollouts followed on a terminal without `-o` or table flags get the live view
/// (symbols, gates, machine tree); one named Rollout gets its page of the live view
/// everywhere, as `kubectl argo rollouts get rollout NAME -w` does. In a pipe, a list
/// prints kubectl's header once and a row per change.
fn live_view_wanted(kind: KindName, args: &GetArgs, view: &View) -> bool {
    use std::io::IsTerminal;
    let plain = args.output.is_none()
        && !args.watch_only
        && !args.show_labels
        && args.label_columns.is_empty()
        && args.sort_by.is_none()
        && !args.no_headers;
    let one = view.names.len() == 1;
    kind == KindName::Rollout && plain && (one || std::io::stdout().is_terminal())
}

fn scope_words(kind: KindName, scope: &Scope) -> String {
    match scope {
        Scope::Namespace(ns) if kind.namespaced() => format!(" in {ns} namespace"),
        _ => String::new(),
    }
}

/// One kind's part of a listing, ready to print.
struct Section {
    kind: KindName,
    /// The objects as JSON, for yaml, json, jsonpath and custom-columns.
    values: Vec<serde_json::Value>,
    /// `rollout.deployctl.dev/api` per object, for `-o name`.
    references: Vec<String>,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Lists one kind; names not found are added to `missing`.
async fn list<K: Columns>(
    g: &GlobalArgs,
    client: &Client,
    scope: &Scope,
    view: &View,
    missing: &mut Vec<CliError>,
) -> anyhow::Result<Section> {
    let listed = within(g, client.list::<K>(scope)).await?;
    let mut items: Vec<K> = listed.items.into_iter().filter(|o| view.wants(o)).collect();
    items.sort_by_key(|o| o.sort_key());
    if !view.names.is_empty() {
        // Keep the order the names were given in, as kubectl does.
        let mut ordered = Vec::new();
        for n in &view.names {
            match items.iter().find(|o| o.name() == n) {
                Some(o) => ordered.push(o.clone()),
                None => missing.push(CliError::NotFound {
                    plural: K::PLURAL,
                    name: n.clone(),
                }),
            }
        }
        items = ordered;
    }
    let items = view.sorted(items)?;
    Ok(Section {
        kind: K::KIND_NAME,
        values: items
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
        references: items
            .iter()
            .map(|o| super::reference(K::KIND_NAME, o.name()))
            .collect(),
        headers: if view.table() {
            view.headers::<K>()
        } else {
            Vec::new()
        },
        rows: if view.table() {
            view.rows(&items)
        } else {
            Vec::new()
        },
    })
}

/// The object itself when one object was named, else a kubectl List of them all.
fn document(sections: &[Section], view: &View) -> serde_json::Value {
    let values: Vec<serde_json::Value> = sections.iter().flat_map(|s| s.values.clone()).collect();
    if view.names.len() == 1 && sections.len() == 1 && values.len() == 1 {
        return values.into_iter().next().expect("one value, checked above");
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": values,
        "metadata": {"resourceVersion": ""},
    })
}

fn print_sections(sections: &[Section], view: &View) -> anyhow::Result<()> {
    let any = sections.iter().any(|s| !s.values.is_empty());
    match &view.format {
        Some(OutputFormat::Yaml) => {
            if any || view.names.is_empty() {
                outln!("{}", output::to_yaml(&document(sections, view))?);
            }
        }
        Some(OutputFormat::Json) => {
            if any || view.names.is_empty() {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&document(sections, view))?
                );
            }
        }
        // Exactly the template's text, as kubectl prints it (no newline added).
        Some(OutputFormat::JsonPath(t)) => {
            if any || view.names.is_empty() {
                out!("{}", t.render(&document(sections, view)));
            }
        }
        Some(OutputFormat::CustomColumns(columns)) => {
            if !any {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = sections
                .iter()
                .flat_map(|s| &s.values)
                .map(|v| columns.iter().map(|c| c.cell(v)).collect())
                .collect();
            let headers: Vec<String> = columns.iter().map(|c| c.header.clone()).collect();
            let headers = (!view.no_headers).then_some(headers.as_slice());
            out!("{}", template::render_columns(headers, &rows));
        }
        Some(OutputFormat::Name) => {
            for r in sections.iter().flat_map(|s| &s.references) {
                outln!("{}", output::escape(r));
            }
        }
        None | Some(OutputFormat::Wide) => {
            let mut first = true;
            for s in sections.iter().filter(|s| !s.rows.is_empty()) {
                if !first {
                    outln!();
                }
                first = false;
                let headers: Vec<&str> = s.headers.iter().map(String::as_str).collect();
                let headers = (!view.no_headers).then_some(headers.as_slice());
                outln!("{}", output::render(headers, &s.rows));
            }
        }
    }
    Ok(())
}

/// Prints the first listing of `-w`: the table with its header, or each object.
fn print_first<K: Columns>(items: &[K], view: &View) -> anyhow::Result<()> {
    match &view.format {
        None | Some(OutputFormat::Wide) => {
            if items.is_empty() {
                return Ok(());
            }
            let headers = view.headers::<K>();
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let headers = (!view.no_headers).then_some(headers.as_slice());
            outln!("{}", output::render(headers, &view.rows(items)));
        }
        Some(OutputFormat::Yaml) => {
            let list = output::list_value(items)?;
            outln!("{}", output::to_yaml(&list)?);
        }
        Some(OutputFormat::Json) => {
            let list = output::list_value(items)?;
            outln!("{}", serde_json::to_string_pretty(&list)?);
        }
        Some(OutputFormat::CustomColumns(columns)) => {
            if items.is_empty() {
                return Ok(());
            }
            let rows = items
                .iter()
                .map(|o| {
                    let value = serde_json::to_value(o)?;
                    Ok(columns.iter().map(|c| c.cell(&value)).collect())
                })
                .collect::<anyhow::Result<Vec<Vec<String>>>>()?;
            let headers: Vec<String> = columns.iter().map(|c| c.header.clone()).collect();
            let headers = (!view.no_headers).then_some(headers.as_slice());
            out!("{}", template::render_columns(headers, &rows));
        }
        Some(OutputFormat::Name | OutputFormat::JsonPath(_)) => {
            for o in items {
                print_change(o, view, &[])?;
            }
        }
    }
    Ok(())
}

/// Prints one changed object during `-w`: a table row without header, or the object.
fn print_change<K: Columns>(obj: &K, view: &View, widths_from: &[String]) -> anyhow::Result<()> {
    match &view.format {
        Some(OutputFormat::Yaml) => outln!("---\n{}", output::to_yaml(obj)?),
        Some(OutputFormat::Json) => outln!("{}", serde_json::to_string_pretty(obj)?),
        Some(OutputFormat::Name) => outln!(
            "{}",
            output::escape(&super::reference(K::KIND_NAME, obj.name()))
        ),
        Some(OutputFormat::JsonPath(t)) => out!("{}", t.render(&serde_json::to_value(obj)?)),
        Some(OutputFormat::CustomColumns(columns)) => {
            let value = serde_json::to_value(obj)?;
            let row: Vec<String> = columns.iter().map(|c| c.cell(&value)).collect();
            out!("{}", template::render_columns(None, &[row]));
        }
        None | Some(OutputFormat::Wide) => {
            let row = view.rows(std::slice::from_ref(obj));
            // Pad to the header's widths so that rows line up under it where they fit.
            let padded: Vec<String> = row[0]
                .iter()
                .enumerate()
                .map(|(i, cell)| match widths_from.get(i) {
                    Some(h) if i + 1 < row[0].len() => format!("{cell:<w$}", w = h.len()),
                    _ => cell.clone(),
                })
                .collect();
            outln!("{}", output::render(None, &[padded]));
        }
    }
    Ok(())
}

/// What a watcher remembers of an object to tell a real change after a relist.
fn version_of<K: Object>(o: &K) -> (String, i64) {
    (
        o.meta().resource_version.clone().unwrap_or_default(),
        o.meta().status_version,
    )
}

/// What `-w` has printed so far of a table: the header (once) and its column widths.
struct Printed {
    /// The header is still to come: the first listing was empty or not printed
    /// (`--watch-only`), so it goes above the first row.
    header_due: bool,
    /// Cells padded to each column's width, so later rows line up with the first.
    widths: Vec<String>,
}

impl Printed {
    /// Prints one change, preceded by the header if none was printed yet.
    fn change<K: Columns>(&mut self, obj: &K, view: &View) -> anyhow::Result<()> {
        if let (true, Some(OutputFormat::CustomColumns(columns))) = (self.header_due, &view.format)
        {
            // The header and the first row in one table, as kubectl flushes them.
            self.header_due = false;
            let value = serde_json::to_value(obj)?;
            let row: Vec<String> = columns.iter().map(|c| c.cell(&value)).collect();
            let headers: Vec<String> = columns.iter().map(|c| c.header.clone()).collect();
            out!("{}", template::render_columns(Some(&headers), &[row]));
            return Ok(());
        }
        if self.header_due && view.table() {
            self.header_due = false;
            let one = std::slice::from_ref(obj);
            self.widths = column_widths(one, view);
            let headers = view.headers::<K>();
            let padded: Vec<String> = headers
                .iter()
                .enumerate()
                .map(|(i, h)| match self.widths.get(i) {
                    Some(w) if i + 1 < headers.len() => format!("{h:<n$}", n = w.len()),
                    _ => h.clone(),
                })
                .collect();
            outln!("{}", output::render(None, &[padded]));
        }
        print_change(obj, view, &self.widths)
    }
}

async fn watch<K: Columns>(
    client: &Client,
    scope: Scope,
    view: &View,
    watch_only: bool,
) -> anyhow::Result<i32> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut stream = client.list_watch::<K>(scope.clone());
    // The last state printed of every object shown, to print only real changes after
    // a relist and to print the rows of objects deleted meanwhile.
    let mut seen: HashMap<String, K> = HashMap::new();
    let mut first = true;
    let mut printed = Printed {
        header_due: !view.no_headers,
        widths: Vec::new(),
    };
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = &mut shutdown => return Ok(0),
        };
        let Some(event) = next else { return Ok(0) };
        let event = match event {
            Ok(e) => e,
            Err(e) if first => return Err(e.into()),
            Err(e) => {
                // The store's watch resumes by itself; say so and keep going.
                tracing::warn!(error = %e, "watch interrupted; resuming");
                continue;
            }
        };
        match event {
            ObjectEvent::Restarted(items) => {
                let mut items: Vec<K> = items.into_iter().filter(|o| view.wants(o)).collect();
                items.sort_by_key(|o| o.sort_key());
                let items = view.sorted(items)?;
                if first {
                    first = false;
                    if !watch_only {
                        if items.is_empty() && view.format.is_none() {
                            eprintln!("No resources found{}.", scope_words(K::KIND_NAME, &scope));
                        }
                        print_first(&items, view)?;
                        if !items.is_empty() {
                            printed.header_due = false;
                            printed.widths = column_widths(&items, view);
                        }
                    }
                } else {
                    for o in &items {
                        let changed = seen
                            .get(&o.meta().key())
                            .is_none_or(|old| version_of(old) != version_of(o));
                        if changed {
                            printed.change(o, view)?;
                        }
                    }
                    let mut gone: Vec<&K> = seen
                        .values()
                        .filter(|old| !items.iter().any(|o| o.meta().key() == old.meta().key()))
                        .collect();
                    gone.sort_by_key(|o| o.sort_key());
                    for old in gone {
                        printed.change(old, view)?;
                    }
                }
                seen = items.into_iter().map(|o| (o.meta().key(), o)).collect();
            }
            ObjectEvent::Applied(o) => {
                if view.wants(&o) {
                    printed.change(&o, view)?;
                    seen.insert(o.meta().key(), o);
                } else if seen.remove(&o.meta().key()).is_some() {
                    // Its labels left the selection: for this watch it is gone.
                    printed.change(&o, view)?;
                }
            }
            ObjectEvent::Deleted(o) => {
                if seen.remove(&o.meta().key()).is_some() || view.wants(&o) {
                    printed.change(&o, view)?;
                }
            }
        }
    }
}

/// Cells padded to each column's width in the first table (header included).
fn column_widths<K: Columns>(items: &[K], view: &View) -> Vec<String> {
    let headers = view.headers::<K>();
    let rows = view.rows(items);
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain(std::iter::once(if view.no_headers {
                    0
                } else {
                    h.chars().count()
                }))
                .max()
                .unwrap_or(0);
            " ".repeat(w)
        })
        .collect()
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when first polled, so a signal that comes while the caller is busy is not lost: call
/// it once, before the work, and keep the future.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // No signal driver (cannot happen on unix with tokio's `signal` feature):
            // never resolve rather than exit at once.
            _ => futures::future::pending::<()>().await,
        }
    }
}
