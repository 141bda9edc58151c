//! `netfn graph`: a chain as Graphviz dot or Mermaid text.
//!
//! Node ids must be unique across every chain of the file: `a` + function `b-c` and `a-b` +
//! function `c` are different nodes, and so are chains `a_b` and `a-b`. DOT ids are quoted
//! strings `"CHAIN/HOP"` ('/' is in no chain or function name; quoted, a name that starts with a
//! digit is a valid id too); Mermaid ids are made of the positions (`c0h1`), with the names in the
//! labels.

use crate::plan::{ChainPlan, HopRole};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dot,
    Mermaid,
}

fn label(plan: &ChainPlan, h: usize) -> String {
    let hop = &plan.hops[h];
    match &hop.role {
        HopRole::Function { kind, .. } => format!("{} ({kind})", hop.name),
        _ => {
            let addr = plan
                .interfaces_of(h)
                .next()
                .map(|e| e.address.to_string())
                .unwrap_or_default();
            format!("{} {addr}", hop.name)
        }
    }
}

/// The DOT id of hop `h` of `plan`: a quoted string.
fn dot_id(plan: &ChainPlan, h: usize) -> String {
    format!("\"{}/{}\"", plan.chain, plan.hops[h].name)
}

/// The Mermaid id of hop `h` of the chain at position `c` of the file.
fn mermaid_id(c: usize, h: usize) -> String {
    format!("c{c}h{h}")
}

/// Renders chains; both directions are implied (chains are symmetric).
pub fn render(plans: &[ChainPlan], format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Dot => {
            out.push_str("digraph netfn {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
            for plan in plans {
                out.push_str(&format!(
                    "  subgraph \"cluster_{c}\" {{\n    label=\"chain {c} ({f})\";\n",
                    c = plan.chain,
                    f = plan.fastpath
                ));
                for h in 0..plan.hops.len() {
                    out.push_str(&format!(
                        "    {} [label=\"{}\"];\n",
                        dot_id(plan, h),
                        label(plan, h)
                    ));
                }
                for link in &plan.links {
                    out.push_str(&format!(
                        "    {} -> {} [dir=both, label=\"{} / {}\"];\n",
                        dot_id(plan, link.out.hop),
                        dot_id(plan, link.inn.hop),
                        link.out.address,
                        link.inn.address
                    ));
                }
                out.push_str("  }\n");
            }
            out.push_str("}\n");
        }
        Format::Mermaid => {
            out.push_str("flowchart LR\n");
            for (c, plan) in plans.iter().enumerate() {
                out.push_str(&format!(
                    "  subgraph c{c}[\"chain {} ({})\"]\n",
                    plan.chain, plan.fastpath
                ));
                for h in 0..plan.hops.len() {
                    out.push_str(&format!(
                        "    {}[\"{}\"]\n",
                        mermaid_id(c, h),
                        label(plan, h)
                    ));
                }
                for link in &plan.links {
                    out.push_str(&format!(
                        "    {} <-->|\"{} / {}\"| {}\n",
                        mermaid_id(c, link.out.hop),
                        link.out.address,
                        link.inn.address,
                        mermaid_id(c, link.inn.hop)
                    ));
                }
                out.push_str("  end\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::plan::plan_chain;
    use crate::plan::test_specs::chain;
    use crate::spec::FastPath;

    /// Chains whose names, joined with their functions' by `-` or `_`, are the same.
    fn lookalikes() -> Vec<ChainPlan> {
        [
            ("a", &["b-c"][..]),
            ("a-b", &["c"]),
            ("a_b", &["c"]),
            ("1st", &["fw"]),
        ]
        .iter()
        .map(|(name, functions)| plan_chain(&chain(name, FastPath::Kernel, functions, None)))
        .collect()
    }

    /// The node ids a rendering declares (`ID [label=…]` or `ID["…"]`), in order.
    fn declared(text: &str, open: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().split_once(open))
            .map(|(id, _)| id.to_string())
            .filter(|id| !id.starts_with("subgraph"))
            .collect()
    }

    #[test]
    fn every_hop_of_every_chain_is_its_own_node() {
        let plans = lookalikes();
        let hops: usize = plans.iter().map(|p| p.hops.len()).sum();
        for (format, open) in [(Format::Dot, " [label="), (Format::Mermaid, "[\"")] {
            let text = render(&plans, format);
            let ids = declared(&text, open);
            assert_eq!(ids.len(), hops, "{text}");
            assert_eq!(
                ids.iter().collect::<BTreeSet<_>>().len(),
                hops,
                "two hops share a node:\n{text}"
            );
        }
    }

    #[test]
    fn dot_ids_are_quoted_and_mermaid_ids_are_plain_words() {
        let plans = lookalikes();
        let dot = render(&plans, Format::Dot);
        // A chain named `1st`: an unquoted DOT id may not start with a digit.
        assert!(dot.contains("\"1st/fw\" [label=\"fw (forward)\"]"), "{dot}");
        for id in declared(&dot, " [label=") {
            assert!(id.starts_with('"') && id.ends_with('"'), "{id} in\n{dot}");
        }
        for edge in dot.lines().filter(|l| l.contains(" -> ")) {
            let (from, rest) = edge.trim().split_once(" -> ").expect("edge");
            let to = rest.split(" [").next().unwrap_or_default();
            assert!(from.starts_with('"') && to.starts_with('"'), "{edge}");
        }
        let mermaid = render(&plans, Format::Mermaid);
        for id in declared(&mermaid, "[\"") {
            assert!(
                id.starts_with('c') && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{id} in\n{mermaid}"
            );
        }
        // The names are in the labels.
        assert!(
            mermaid.contains("subgraph c1[\"chain a-b (kernel)\"]"),
            "{mermaid}"
        );
        assert!(mermaid.contains("[\"b-c (forward)\"]"), "{mermaid}");
    }
}
