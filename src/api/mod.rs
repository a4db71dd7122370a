//! Object types shared by every part of deployctl: what users write and what is stored.
//!
//! Every kind looks like a Kubernetes object (`apiVersion`, `kind`, `metadata`, `spec`,
//! `status`). The Rust doc comments here become the descriptions in `schemas/*.json`.

mod analysis;
mod application;
mod common;
mod event;
mod instance;
mod machine;
mod meta;
mod notifier;
pub mod reference;
pub mod request;
mod rollout;
pub mod schema;
pub mod selector;
mod sync;
mod task;
pub mod validation;

pub use analysis::*;
pub use application::*;
pub use common::*;
pub use event::*;
pub use instance::*;
pub use machine::*;
pub use meta::*;
pub use notifier::*;
pub use rollout::*;
pub use sync::*;
pub use task::*;

use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// The `apiVersion` of every deployctl object.
pub const API_VERSION: &str = "deployctl.dev/v1";
/// The API group, as printed by `apply` (`rollout.deployctl.dev/api configured`).
pub const GROUP: &str = "deployctl.dev";

/// What every stored kind has in common. Implemented by the [`object!`] macro.
pub trait Object:
    Serialize + DeserializeOwned + JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    type Spec: Serialize + DeserializeOwned + Clone + Debug + PartialEq + Default + Send + Sync;
    type Status: Serialize + DeserializeOwned + Clone + Debug + PartialEq + Default + Send + Sync;

    /// `Rollout`
    const KIND: &'static str;
    /// `rollouts`: the word in keys and on the command line.
    const PLURAL: &'static str;
    /// `rollout`
    const SINGULAR: &'static str;
    /// `ro`
    const SHORT_NAMES: &'static [&'static str];
    /// Cluster-scoped kinds (Machine) have no namespace.
    const NAMESPACED: bool;

    fn new(name: &str, spec: Self::Spec) -> Self;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    fn spec(&self) -> &Self::Spec;
    fn spec_mut(&mut self) -> &mut Self::Spec;
    fn status(&self) -> Option<&Self::Status>;
    fn status_mut(&mut self) -> &mut Option<Self::Status>;

    fn name(&self) -> &str {
        &self.meta().name
    }
    fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref()
    }
}

/// Declares one kind: the struct with `apiVersion`, `kind`, `metadata`, `spec`, `status`,
/// and its [`Object`] impl.
macro_rules! object {
    (
        $(#[$doc:meta])*
        $name:ident, spec: $spec:ty, status: $status:ty,
        plural: $plural:literal, singular: $singular:literal, short: [$($short:literal),*],
        namespaced: $ns:literal
    ) => {
        $crate::api::object! {
            $(#[$doc])*
            $name, kind: stringify!($name), spec: $spec, status: $status,
            plural: $plural, singular: $singular, short: [$($short),*],
            namespaced: $ns
        }
    };
    // `kind:` when the `kind` word is not the struct's name (`Sync` would shadow the
    // `Sync` trait, so its struct is `GitSync`).
    (
        $(#[$doc:meta])*
        $name:ident, kind: $kind:expr, spec: $spec:ty, status: $status:ty,
        plural: $plural:literal, singular: $singular:literal, short: [$($short:literal),*],
        namespaced: $ns:literal
    ) => {
        $(#[$doc])*
        #[derive(
            ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema,
            Clone, Debug, PartialEq,
        )]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Always `deployctl.dev/v1`.
            pub api_version: String,
            #[doc = concat!("Always `", $kind, "`.")]
            pub kind: String,
            pub metadata: $crate::api::ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            /// Observed state, written only by its owner (never by `apply`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
        }

        impl $crate::api::Object for $name {
            type Spec = $spec;
            type Status = $status;
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            const SINGULAR: &'static str = $singular;
            const SHORT_NAMES: &'static [&'static str] = &[$($short),*];
            const NAMESPACED: bool = $ns;

            fn new(name: &str, spec: $spec) -> Self {
                Self {
                    api_version: $crate::api::API_VERSION.to_string(),
                    kind: $kind.to_string(),
                    metadata: $crate::api::ObjectMeta {
                        name: name.to_string(),
                        namespace: if $ns { Some($crate::api::DEFAULT_NAMESPACE.to_string()) } else { None },
                        ..Default::default()
                    },
                    spec,
                    status: None,
                }
            }
            fn meta(&self) -> &$crate::api::ObjectMeta { &self.metadata }
            fn meta_mut(&mut self) -> &mut $crate::api::ObjectMeta { &mut self.metadata }
            fn spec(&self) -> &$spec { &self.spec }
            fn spec_mut(&mut self) -> &mut $spec { &mut self.spec }
            fn status(&self) -> Option<&$status> { self.status.as_ref() }
            fn status_mut(&mut self) -> &mut Option<$status> { &mut self.status }
        }
    };
}
pub(crate) use object;

/// The kinds a user can name on the command line, resolved from any alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KindName {
    Machine,
    Application,
    Rollout,
    Instance,
    Event,
    Sync,
    Notifier,
    Task,
    AnalysisTemplate,
}

impl KindName {
    pub const ALL: [KindName; 9] = [
        KindName::Machine,
        KindName::Application,
        KindName::Rollout,
        KindName::Instance,
        KindName::Event,
        KindName::Sync,
        KindName::Notifier,
        KindName::Task,
        KindName::AnalysisTemplate,
    ];

    /// Kinds a user may `apply` (the others are written by deployctl itself).
    pub fn is_user_kind(self) -> bool {
        matches!(
            self,
            KindName::Machine
                | KindName::Application
                | KindName::Rollout
                | KindName::Notifier
                | KindName::AnalysisTemplate
        )
    }

    pub fn kind(self) -> &'static str {
        match self {
            KindName::Machine => Machine::KIND,
            KindName::Application => Application::KIND,
            KindName::Rollout => Rollout::KIND,
            KindName::Instance => Instance::KIND,
            KindName::Event => Event::KIND,
            KindName::Sync => GitSync::KIND,
            KindName::Notifier => Notifier::KIND,
            KindName::Task => Task::KIND,
            KindName::AnalysisTemplate => AnalysisTemplate::KIND,
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            KindName::Machine => Machine::PLURAL,
            KindName::Application => Application::PLURAL,
            KindName::Rollout => Rollout::PLURAL,
            KindName::Instance => Instance::PLURAL,
            KindName::Event => Event::PLURAL,
            KindName::Sync => GitSync::PLURAL,
            KindName::Notifier => Notifier::PLURAL,
            KindName::Task => Task::PLURAL,
            KindName::AnalysisTemplate => AnalysisTemplate::PLURAL,
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            KindName::Machine => Machine::SINGULAR,
            KindName::Application => Application::SINGULAR,
            KindName::Rollout => Rollout::SINGULAR,
            KindName::Instance => Instance::SINGULAR,
            KindName::Event => Event::SINGULAR,
            KindName::Sync => GitSync::SINGULAR,
            KindName::Notifier => Notifier::SINGULAR,
            KindName::Task => Task::SINGULAR,
            KindName::AnalysisTemplate => AnalysisTemplate::SINGULAR,
        }
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            KindName::Machine => Machine::SHORT_NAMES,
            KindName::Application => Application::SHORT_NAMES,
            KindName::Rollout => Rollout::SHORT_NAMES,
            KindName::Instance => Instance::SHORT_NAMES,
            KindName::Event => Event::SHORT_NAMES,
            KindName::Sync => GitSync::SHORT_NAMES,
            KindName::Notifier => Notifier::SHORT_NAMES,
            KindName::Task => Task::SHORT_NAMES,
            KindName::AnalysisTemplate => AnalysisTemplate::SHORT_NAMES,
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, KindName::Machine | KindName::Sync)
    }

    /// Resolves `ro`, `rollout`, `rollouts`, `Rollout` or `rollout.deployctl.dev`.
    pub fn parse(word: &str) -> Option<KindName> {
        let lower = word.to_ascii_lowercase();
        let lower = lower.strip_suffix(".deployctl.dev").unwrap_or(&lower);
        KindName::ALL.into_iter().find(|k| {
            k.plural() == lower
                || k.singular() == lower
                || k.kind().eq_ignore_ascii_case(lower)
                || k.short_names().contains(&lower)
        })
    }

    /// Resolves the `kind:` field of a manifest, which is case-sensitive as in Kubernetes.
    pub fn from_kind(kind: &str) -> Option<KindName> {
        KindName::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

impl std::fmt::Display for KindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_should_resolve_every_alias() {
        for (word, want) in [
            ("ro", KindName::Rollout),
            ("rollouts", KindName::Rollout),
            ("Rollout", KindName::Rollout),
            ("rollout.deployctl.dev", KindName::Rollout),
            ("app", KindName::Application),
            ("apps", KindName::Application),
            ("applications", KindName::Application),
            ("inst", KindName::Instance),
            ("machine", KindName::Machine),
            ("mc", KindName::Machine),
            ("ev", KindName::Event),
            ("notifiers", KindName::Notifier),
            ("nt", KindName::Notifier),
            ("tasks", KindName::Task),
            ("tk", KindName::Task),
            ("analysistemplates", KindName::AnalysisTemplate),
            ("at", KindName::AnalysisTemplate),
        ] {
            assert_eq!(KindName::parse(word), Some(want), "{word}");
        }
        assert_eq!(KindName::parse("pods"), None);
    }
}
