//! Who may publish to a topic and subscribe to a filter: pure decisions from the
//! configuration's rules and what the guard knows of the client (its [`Principal`]).
//!
//! Two kinds of rules:
//! - **Grants** come from guarded routes (`routes[].guarded`): a topic that a guarded
//!   route's condition matches may be used only by a client holding one of the roles the
//!   route names, and, where the condition has an `{identity}` level, only with its own
//!   identity there (`devices/{identity}/#` confines each device to its own topics). A
//!   topic no guarded route matches is open to every connected client (it had to pass the
//!   guard at CONNECT when a guard is configured).
//! - **Deny rules** (`authorization.deny`) close a filter to everybody, with or without
//!   a guard: a PUBLISH to a topic it matches, or a SUBSCRIBE to a filter that could match
//!   such a topic, is refused.
//!
//! A subscription is allowed only when everything it could receive is allowed: its filter
//! must not overlap a deny rule, and if it overlaps a guarded condition it must be covered
//! by one the client satisfies (`devices/#` is refused to a device confined to
//! `devices/{identity}/#`, `devices/d1/#` is not). Publishing is decided per topic.

use std::collections::BTreeSet;

use super::filters::{covers, overlap};
use crate::broker::identity::IDENTITY;
use crate::broker::topic::{self, parse_shared};

/// What a client asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

/// A guarded route's condition: `action` on topics its `filter` matches needs one of
/// `roles`, given by guard `guard`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub action: Action,
    /// A topic filter; a level `{identity}` stands for the client's own identity.
    pub filter: String,
    pub guard: String,
    /// Any one of them is enough; empty: any client the guard accepted.
    pub roles: Vec<String>,
}

/// Nobody may do `actions` on topics `filter` matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deny {
    pub filter: String,
    pub actions: Vec<Action>,
}

/// What authorization knows of a connected client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// The guard that accepted it (`None`: no guard is configured).
    pub guard: Option<String>,
    /// Its identity (the token's subject): what `{identity}` stands for.
    pub identity: Option<String>,
    pub roles: BTreeSet<String>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A deny rule with this filter closes it.
    Denied { rule: String },
    /// Guarded routes cover it, and the client has none of their roles (or not its own
    /// identity there).
    NotGranted,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied { rule } => write!(f, "closed by the deny rule {rule:?}"),
            Refusal::NotGranted => f.write_str("no guarded route grants it to this client"),
        }
    }
}

/// The rules, ready to decide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    grants: Vec<Grant>,
    denies: Vec<Deny>,
}

impl Policy {
    pub fn new(grants: Vec<Grant>, denies: Vec<Deny>) -> Self {
        Self { grants, denies }
    }

    /// Whether there is any rule at all (without, everything is allowed).
    pub fn is_open(&self) -> bool {
        self.grants.is_empty() && self.denies.is_empty()
    }

    /// May `who` publish to `topic` (a topic name, no wildcards)?
    pub fn publish(&self, who: &Principal, topic: &str) -> Result<(), Refusal> {
        self.decide(who, Action::Publish, topic, topic::matches)
    }

    /// May `who` subscribe to `filter` (`$share/{group}/{filter}` is decided by its filter)?
    pub fn subscribe(&self, who: &Principal, filter: &str) -> Result<(), Refusal> {
        let filter = match parse_shared(filter) {
            Ok(Some(shared)) => shared.filter,
            _ => filter,
        };
        self.decide(who, Action::Subscribe, filter, covers)
    }

    /// `within(rule_filter, asked)`: whether a rule's filter takes in all of what is asked.
    fn decide(
        &self,
        who: &Principal,
        action: Action,
        asked: &str,
        within: impl Fn(&str, &str) -> bool,
    ) -> Result<(), Refusal> {
        // For a topic name, overlapping a filter is matching it.
        if let Some(deny) = self
            .denies
            .iter()
            .find(|d| d.actions.contains(&action) && overlap(&d.filter, asked))
        {
            return Err(Refusal::Denied {
                rule: deny.filter.clone(),
            });
        }
        let mut guarded = false;
        for grant in self.grants.iter().filter(|g| g.action == action) {
            if !overlap(&any_identity(&grant.filter), asked) {
                continue;
            }
            guarded = true;
            if grants_to(grant, who) && own_filter(&grant.filter, who).is_some_and(|own| within(&own, asked)) {
                return Ok(());
            }
        }
        if guarded { Err(Refusal::NotGranted) } else { Ok(()) }
    }
}

/// Whether `who` was accepted by the grant's guard and holds one of its roles.
fn grants_to(grant: &Grant, who: &Principal) -> bool {
    who.guard.as_deref() == Some(grant.guard.as_str())
        && (grant.roles.is_empty() || grant.roles.iter().any(|r| who.roles.contains(r)))
}

/// `filter` with `{identity}` levels as `+`: every topic any client's rule could be about.
fn any_identity(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| if level == IDENTITY { "+" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

/// `filter` with `{identity}` levels as `who`'s identity; `None` when it has one and `who`
/// has none that can stand as a topic level (empty, or with `/`, `+`, `#`).
fn own_filter(filter: &str, who: &Principal) -> Option<String> {
    if !filter.split('/').any(|level| level == IDENTITY) {
        return Some(filter.to_owned());
    }
    let identity = who
        .identity
        .as_deref()
        .filter(|i| !i.is_empty() && !i.contains(['/', '+', '#']) && !i.starts_with('$'))?;
    Some(
        filter
            .split('/')
            .map(|level| if level == IDENTITY { identity } else { level })
            .collect::<Vec<_>>()
            .join("/"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(identity: &str, roles: &[&str]) -> Principal {
        Principal {
            guard: Some("jwt".into()),
            identity: Some(identity.into()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn grant(action: Action, filter: &str, roles: &[&str]) -> Grant {
        Grant {
            action,
            filter: filter.into(),
            guard: "jwt".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn policy() -> Policy {
        Policy::new(
            vec![
                grant(Action::Publish, "devices/{identity}/#", &["device"]),
                grant(Action::Subscribe, "devices/{identity}/commands/#", &["device"]),
                grant(Action::Subscribe, "devices/#", &["operator"]),
                grant(Action::Publish, "devices/+/commands/#", &["operator"]),
            ],
            vec![Deny {
                filter: "internal/#".into(),
                actions: vec![Action::Publish, Action::Subscribe],
            }],
        )
    }

    #[test]
    fn a_device_is_confined_to_its_own_topics() {
        let p = policy();
        let d1 = device("d1", &["device"]);
        assert_eq!(p.publish(&d1, "devices/d1/telemetry"), Ok(()));
        assert_eq!(p.publish(&d1, "devices/d2/telemetry"), Err(Refusal::NotGranted));
        assert_eq!(p.subscribe(&d1, "devices/d1/commands/#"), Ok(()));
        assert_eq!(p.subscribe(&d1, "$share/g/devices/d1/commands/+"), Ok(()));
        assert_eq!(p.subscribe(&d1, "devices/d2/commands/#"), Err(Refusal::NotGranted));
        assert_eq!(
            p.subscribe(&d1, "devices/#"),
            Err(Refusal::NotGranted),
            "would read the others"
        );
        assert_eq!(p.subscribe(&d1, "devices/+/commands/#"), Err(Refusal::NotGranted));
    }

    #[test]
    fn a_role_opens_what_its_route_names_and_nothing_else() {
        let p = policy();
        let operator = device("ops-1", &["operator"]);
        assert_eq!(p.subscribe(&operator, "devices/#"), Ok(()));
        assert_eq!(p.publish(&operator, "devices/d7/commands/reboot"), Ok(()));
        assert_eq!(p.publish(&operator, "devices/d7/telemetry"), Err(Refusal::NotGranted));
        let nobody = device("x", &[]);
        assert_eq!(p.subscribe(&nobody, "devices/d1/commands/#"), Err(Refusal::NotGranted));
    }

    #[test]
    fn topics_no_guarded_route_matches_are_open_and_deny_rules_close_them_for_everyone() {
        let p = policy();
        let d1 = device("d1", &["device"]);
        assert_eq!(p.publish(&d1, "weather/today"), Ok(()));
        assert_eq!(p.subscribe(&d1, "weather/#"), Ok(()));
        let denied = Err(Refusal::Denied {
            rule: "internal/#".into(),
        });
        assert_eq!(p.publish(&d1, "internal/x"), denied);
        assert_eq!(p.subscribe(&device("ops", &["operator"]), "internal/x/y"), denied);
        assert_eq!(p.subscribe(&d1, "#"), denied, "# could receive internal topics");
        assert_eq!(p.subscribe(&d1, "+/x"), denied);
        let anonymous = Principal::default();
        assert_eq!(
            Policy::new(Vec::new(), p.denies.clone()).publish(&anonymous, "internal/a"),
            denied
        );
        assert_eq!(Policy::default().subscribe(&anonymous, "#"), Ok(()));
    }

    #[test]
    fn an_identity_that_is_not_a_topic_level_satisfies_no_identity_rule() {
        let p = policy();
        for identity in ["", "a/b", "+", "#", "$x"] {
            let who = device(identity, &["device"]);
            assert_eq!(
                p.publish(&who, &format!("devices/{identity}/t")),
                Err(Refusal::NotGranted),
                "{identity:?}"
            );
        }
        let without = Principal {
            identity: None,
            ..device("d1", &["device"])
        };
        assert_eq!(p.publish(&without, "devices/d1/t"), Err(Refusal::NotGranted));
    }

    #[test]
    fn a_grant_of_another_guard_grants_nothing() {
        let mut g = grant(Action::Publish, "x/#", &[]);
        g.guard = "other".into();
        let p = Policy::new(vec![g], Vec::new());
        assert_eq!(p.publish(&device("d", &[]), "x/1"), Err(Refusal::NotGranted));
        assert_eq!(p.publish(&device("d", &[]), "y/1"), Ok(()));
    }
}
