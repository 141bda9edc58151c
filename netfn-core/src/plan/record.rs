//! How a [`HopPlan`] is read back from a chain record. The derived form would flatten the hop's
//! role into the hop, and serde buffers a flattened map as a tree before it builds the hop: a
//! firewall's 100,000 recorded rules would be parsed into that tree, and [`RecordedSettings`]
//! (kept verbatim) cannot be taken from it. This struct reads the same JSON field by field.

use serde::Deserialize;

use super::{ExtraSource, HopPlan, HopRole, NetnsPlan, RoutePlan};
use crate::function::RecordedSettings;

/// What a hop is, as the record's `role` field names it.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Ingress,
    Function,
    Egress,
}

/// A [`HopPlan`] as written in a chain record (same fields, the role's inline).
#[derive(Deserialize)]
pub(super) struct HopRecord {
    name: String,
    role: RoleName,
    #[serde(default)]
    kind: String,
    settings: Option<RecordedSettings>,
    netns: NetnsPlan,
    forwarding: bool,
    routes: Vec<RoutePlan>,
    #[serde(default)]
    retired_in: Vec<u32>,
    #[serde(default)]
    retired_out: Vec<u32>,
    #[serde(default)]
    slot: Option<u32>,
    #[serde(default)]
    stage: bool,
    #[serde(default)]
    sources: Vec<ExtraSource>,
}

impl From<HopRecord> for HopPlan {
    fn from(r: HopRecord) -> Self {
        let role = match r.role {
            RoleName::Ingress => HopRole::Ingress,
            RoleName::Egress => HopRole::Egress,
            RoleName::Function => HopRole::Function {
                kind: r.kind,
                settings: r.settings.unwrap_or_else(RecordedSettings::none),
            },
        };
        HopPlan {
            name: r.name,
            role,
            netns: r.netns,
            forwarding: r.forwarding,
            routes: r.routes,
            retired_in: r.retired_in,
            retired_out: r.retired_out,
            slot: r.slot,
            stage: r.stage,
            sources: r.sources,
        }
    }
}
