//! What changed between a running chain (its recorded plan) and its chain file: the first half of
//! `netfn apply`. Pure data, no kernel.

use std::collections::BTreeMap;
use std::fmt;

use crate::function::RecordedSettings;
use crate::plan::{ChainPlan, HopRole};

/// One change to a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A function that is new, inserted after `after` (None = right after ingress).
    Added {
        name: String,
        kind: String,
        after: Option<String>,
    },
    Removed {
        name: String,
    },
    /// Same name, different kind (a replacement: needs `down` and `up`).
    Changed {
        name: String,
        what: String,
    },
    /// Same name and kind, different settings: the kind changes them in place if it can.
    Settings {
        name: String,
        kind: String,
    },
    /// The functions both versions have are in another order.
    Reordered {
        from: Vec<String>,
        to: Vec<String>,
    },
    /// A change of the chain itself (fast path, endpoints, transit) that needs `down` + `up`.
    Chain {
        what: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { name, kind, after } => {
                let at = after
                    .as_deref()
                    .map_or("at the front".to_string(), |a| format!("after {a}"));
                write!(f, "+ add function {name} ({kind}) {at}")
            }
            Change::Removed { name } => write!(f, "- remove function {name}"),
            Change::Changed { name, what } => write!(f, "~ change function {name}: {what}"),
            Change::Settings { name, kind } => {
                write!(
                    f,
                    "~ change the settings of function {name} ({kind}) in place"
                )
            }
            Change::Reordered { from, to } => {
                write!(f, "↕ reorder: {} → {}", from.join(", "), to.join(", "))
            }
            Change::Chain { what } => {
                write!(f, "! chain: {what} (needs `netfn down` and `netfn up`)")
            }
        }
    }
}

fn functions(plan: &ChainPlan) -> Vec<(&str, &str, &RecordedSettings)> {
    plan.hops
        .iter()
        .filter_map(|h| match &h.role {
            HopRole::Function { kind, settings } => {
                Some((h.name.as_str(), kind.as_str(), settings))
            }
            _ => None,
        })
        .collect()
}

/// The changes that turn `old` into `new` (both plans of the same chain).
pub fn diff(old: &ChainPlan, new: &ChainPlan) -> Vec<Change> {
    let mut changes = Vec::new();
    if old.fastpath != new.fastpath {
        changes.push(Change::Chain {
            what: format!("fast path {} → {}", old.fastpath, new.fastpath),
        });
    }
    let endpoints = |p: &ChainPlan| {
        let first = p.links.first().map(|l| (l.out.address, l.inn.address));
        let last = p.links.last().map(|l| (l.out.address, l.inn.address));
        let ns = (
            p.hops.first().map(|h| h.netns.clone()),
            p.hops.last().map(|h| h.netns.clone()),
        );
        (first, last, ns)
    };
    if endpoints(old) != endpoints(new) {
        changes.push(Change::Chain {
            what: "ingress or egress endpoint changed".into(),
        });
    }

    let (before, after) = (functions(old), functions(new));
    let old_by_name: BTreeMap<&str, (&str, &RecordedSettings)> =
        before.iter().map(|(n, k, s)| (*n, (*k, *s))).collect();
    let new_by_name: BTreeMap<&str, (&str, &RecordedSettings)> =
        after.iter().map(|(n, k, s)| (*n, (*k, *s))).collect();

    for (name, ..) in &before {
        if !new_by_name.contains_key(name) {
            changes.push(Change::Removed {
                name: name.to_string(),
            });
        }
    }
    for (i, (name, kind, settings)) in after.iter().enumerate() {
        match old_by_name.get(name) {
            None => changes.push(Change::Added {
                name: name.to_string(),
                kind: kind.to_string(),
                after: i.checked_sub(1).map(|p| after[p].0.to_string()),
            }),
            Some((old_kind, _)) if old_kind != kind => changes.push(Change::Changed {
                name: name.to_string(),
                what: format!("kind {old_kind} → {kind}"),
            }),
            Some((_, old_settings)) if old_settings != settings => changes.push(Change::Settings {
                name: name.to_string(),
                kind: kind.to_string(),
            }),
            Some(_) => {}
        }
    }
    let common_old: Vec<String> = before
        .iter()
        .filter(|(n, ..)| new_by_name.contains_key(n))
        .map(|(n, ..)| n.to_string())
        .collect();
    let common_new: Vec<String> = after
        .iter()
        .filter(|(n, ..)| old_by_name.contains_key(n))
        .map(|(n, ..)| n.to_string())
        .collect();
    if common_old != common_new {
        changes.push(Change::Reordered {
            from: common_old,
            to: common_new,
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{HopPlan, NetnsPlan};
    use crate::spec::FastPath;

    fn hop(name: &str, kind: &str) -> HopPlan {
        HopPlan {
            name: name.into(),
            role: HopRole::Function {
                kind: kind.into(),
                settings: RecordedSettings::of(&serde_json::json!({})),
            },
            netns: NetnsPlan {
                name: format!("nf-c-{name}"),
                created: true,
            },
            forwarding: true,
            routes: Vec::new(),
            retired_in: Vec::new(),
            retired_out: Vec::new(),
            slot: None,
            stage: false,
            sources: Vec::new(),
        }
    }

    fn endpoint(name: &str, role: HopRole) -> HopPlan {
        HopPlan {
            name: name.into(),
            role,
            netns: NetnsPlan {
                name: format!("nf-c-{name}"),
                created: true,
            },
            forwarding: false,
            routes: Vec::new(),
            retired_in: Vec::new(),
            retired_out: Vec::new(),
            slot: None,
            stage: false,
            sources: Vec::new(),
        }
    }

    fn chain(fns: &[(&str, &str)]) -> ChainPlan {
        let mut hops = vec![endpoint("ingress", HopRole::Ingress)];
        hops.extend(fns.iter().map(|(n, k)| hop(n, k)));
        hops.push(endpoint("egress", HopRole::Egress));
        ChainPlan {
            chain: "c".into(),
            fastpath: FastPath::Kernel,
            hops,
            links: Vec::new(),
            capacity: Default::default(),
        }
    }

    #[test]
    fn unchanged_chain_has_no_changes() {
        let a = chain(&[("a", "forward"), ("b", "forward")]);
        assert_eq!(diff(&a, &a.clone()), Vec::new());
    }

    #[test]
    fn insert_remove_change_and_reorder_are_each_reported() {
        let old = chain(&[
            ("a", "forward"),
            ("b", "forward"),
            ("c", "forward"),
            ("d", "forward"),
        ]);
        let new = chain(&[
            ("a", "forward"),
            ("x", "forward"),
            ("c", "firewall"),
            ("b", "forward"),
        ]);
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![
                Change::Removed { name: "d".into() },
                Change::Added {
                    name: "x".into(),
                    kind: "forward".into(),
                    after: Some("a".into())
                },
                Change::Changed {
                    name: "c".into(),
                    what: "kind forward → firewall".into()
                },
                Change::Reordered {
                    from: vec!["a".into(), "b".into(), "c".into()],
                    to: vec!["a".into(), "c".into(), "b".into()],
                },
            ]
        );
        assert_eq!(changes[1].to_string(), "+ add function x (forward) after a");
    }

    #[test]
    fn fast_path_change_needs_a_rebuild() {
        let old = chain(&[("a", "forward")]);
        let mut new = old.clone();
        new.fastpath = FastPath::Tc;
        assert!(matches!(&diff(&old, &new)[..], [Change::Chain { .. }]));
    }
}
