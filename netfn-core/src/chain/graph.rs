//! `netfn graph`: a chain as Graphviz dot or Mermaid text.

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

fn node_id(plan: &ChainPlan, h: usize) -> String {
    format!("{}_{}", plan.chain, plan.hops[h].name).replace('-', "_")
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
                        node_id(plan, h),
                        label(plan, h)
                    ));
                }
                for link in &plan.links {
                    out.push_str(&format!(
                        "    {} -> {} [dir=both, label=\"{} / {}\"];\n",
                        node_id(plan, link.out.hop),
                        node_id(plan, link.inn.hop),
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
            for plan in plans {
                out.push_str(&format!(
                    "  subgraph {}[\"chain {} ({})\"]\n",
                    plan.chain.replace('-', "_"),
                    plan.chain,
                    plan.fastpath
                ));
                for h in 0..plan.hops.len() {
                    out.push_str(&format!(
                        "    {}[\"{}\"]\n",
                        node_id(plan, h),
                        label(plan, h)
                    ));
                }
                for link in &plan.links {
                    out.push_str(&format!(
                        "    {} <-->|\"{} / {}\"| {}\n",
                        node_id(plan, link.out.hop),
                        link.out.address,
                        link.inn.address,
                        node_id(plan, link.inn.hop)
                    ));
                }
                out.push_str("  end\n");
            }
        }
    }
    out
}
