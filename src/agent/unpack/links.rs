//! Follows every symlink of an unpacked tree, as the kernel would, to prove none leads out.
//!
//! The check reads the tree once (directories and symlinks, never following a link) into
//! memory, then resolves each link's target component by component from the directory
//! that holds it: a directory moves down, `..` moves up (past the root is a refusal), a
//! link is replaced by where it resolves. A name that does not exist (or is a file) is
//! kept as text, so `missing/..` comes back where a later directory would bring it. Each
//! link is resolved once and remembered, so the check is linear in the size of the tree
//! and its link targets, and does not depend on the order the archive had.

use cap_std::fs::Dir;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Longest chain of links followed from one link (the kernel's own limit).
const MAX_HOPS: u32 = 40;

/// Why the tree was refused.
#[derive(Debug)]
pub enum Refusal {
    /// The link at `link` (relative to the root) leads outside it.
    Link { link: String, why: String },
    /// The tree could not be read.
    Io { path: String, source: io::Error },
}

/// Refuses the tree beneath `root` when one of its symlinks resolves outside it.
pub fn check(root: &Dir) -> Result<(), Refusal> {
    let mut tree = Tree::read(root)?;
    for id in 0..tree.nodes.len() {
        if matches!(tree.nodes[id].kind, Kind::Link { .. }) {
            tree.resolve(id, 0)?;
        }
    }
    Ok(())
}

/// A position reached while resolving: a real directory, then names that are not
/// directories on disk (missing, or files), kept as text.
#[derive(Clone, Debug)]
struct Pos {
    dir: usize,
    rest: Vec<OsString>,
}

#[derive(Debug)]
enum State {
    Unresolved,
    /// On the current chain: meeting it again is a loop.
    Resolving,
    Resolved(Pos),
}

#[derive(Debug)]
enum Kind {
    Dir { children: HashMap<OsString, usize> },
    Link { target: PathBuf, state: State },
}

#[derive(Debug)]
struct Node {
    /// `None` for the root.
    parent: Option<usize>,
    name: OsString,
    kind: Kind,
}

struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Reads the directories and symlinks beneath `root`, without following any link.
    fn read(root: &Dir) -> Result<Tree, Refusal> {
        let mut tree = Tree {
            nodes: vec![Node {
                parent: None,
                name: OsString::new(),
                kind: Kind::Dir {
                    children: HashMap::new(),
                },
            }],
        };
        let read_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| Refusal::Io { path, source }
        };
        // Paths, not open handles: a wide tree must not hold a descriptor per directory.
        let mut pending: Vec<(usize, PathBuf)> = vec![(0, PathBuf::new())];
        while let Some((id, rel)) = pending.pop() {
            let entries = if rel.as_os_str().is_empty() {
                root.entries()
            } else {
                root.read_dir(&rel)
            }
            .map_err(read_error(&rel))?;
            for e in entries {
                let e = e.map_err(read_error(&rel))?;
                let name = e.file_name();
                let path = rel.join(&name);
                let ft = e.file_type().map_err(read_error(&path))?;
                let kind = if ft.is_dir() {
                    Kind::Dir {
                        children: HashMap::new(),
                    }
                } else if ft.is_symlink() {
                    let target = root.read_link_contents(&path).map_err(read_error(&path))?;
                    Kind::Link {
                        target,
                        state: State::Unresolved,
                    }
                } else {
                    continue;
                };
                let child = tree.nodes.len();
                let is_dir = matches!(kind, Kind::Dir { .. });
                tree.nodes.push(Node {
                    parent: Some(id),
                    name: name.clone(),
                    kind,
                });
                if let Kind::Dir { children } = &mut tree.nodes[id].kind {
                    children.insert(name, child);
                }
                if is_dir {
                    pending.push((child, path));
                }
            }
        }
        Ok(tree)
    }

    /// The path of node `id` relative to the root, for messages.
    fn path(&self, mut id: usize) -> String {
        let mut names = Vec::new();
        while let Some(parent) = self.nodes[id].parent {
            names.push(self.nodes[id].name.clone());
            id = parent;
        }
        let path: PathBuf = names.iter().rev().collect();
        path.display().to_string()
    }

    fn refuse(&self, id: usize, why: String) -> Refusal {
        Refusal::Link {
            link: self.path(id),
            why,
        }
    }

    /// Where link `id` leads, reached `hops` links deep.
    fn resolve(&mut self, id: usize, hops: u32) -> Result<Pos, Refusal> {
        let target = match &self.nodes[id].kind {
            Kind::Link {
                state: State::Resolved(pos),
                ..
            } => return Ok(pos.clone()),
            Kind::Link {
                state: State::Resolving,
                ..
            } => return Err(self.refuse(id, "symlink loop".into())),
            Kind::Link { target, .. } => target.clone(),
            Kind::Dir { .. } => unreachable!("resolve is only called on links"),
        };
        if hops >= MAX_HOPS {
            return Err(self.refuse(id, format!("symlink chain longer than {MAX_HOPS} links")));
        }
        self.set_state(id, State::Resolving);
        let parent = self.nodes[id]
            .parent
            .expect("a link is never the root, which is a directory");
        let start = Pos {
            dir: parent,
            rest: Vec::new(),
        };
        let pos = self.walk(id, start, &target, hops)?;
        self.set_state(id, State::Resolved(pos.clone()));
        Ok(pos)
    }

    fn set_state(&mut self, id: usize, new: State) {
        if let Kind::Link { state, .. } = &mut self.nodes[id].kind {
            *state = new;
        }
    }

    /// Follows `path` from `pos`, as the target of link `link`.
    fn walk(&mut self, link: usize, mut pos: Pos, path: &Path, hops: u32) -> Result<Pos, Refusal> {
        for c in path.components() {
            match c {
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.refuse(
                        link,
                        format!("symlink target {} is absolute", path.display()),
                    ))
                }
                Component::ParentDir => {
                    if pos.rest.pop().is_none() {
                        match self.nodes[pos.dir].parent {
                            Some(p) => pos.dir = p,
                            None => {
                                return Err(self.refuse(
                                    link,
                                    format!(
                                        "symlink target {} leads outside the release directory \
                                         through the links in it",
                                        path.display()
                                    ),
                                ))
                            }
                        }
                    }
                }
                Component::Normal(name) => {
                    if !pos.rest.is_empty() {
                        pos.rest.push(name.to_os_string());
                        continue;
                    }
                    let child = match &self.nodes[pos.dir].kind {
                        Kind::Dir { children } => children.get(name).copied(),
                        Kind::Link { .. } => unreachable!("a position is always a directory"),
                    };
                    match child {
                        None => pos.rest.push(name.to_os_string()),
                        Some(c) if matches!(self.nodes[c].kind, Kind::Dir { .. }) => pos.dir = c,
                        Some(c) => pos = self.resolve(c, hops + 1)?,
                    }
                }
            }
        }
        Ok(pos)
    }
}
