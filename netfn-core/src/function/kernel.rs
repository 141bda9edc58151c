//! What a kind's kernel-mode form ([`super::FunctionConfig::kernel_form`]) knows about the
//! function it runs in: the names of its two interfaces and the chain's subnets. Pure data, from
//! the plan; core loads the ruleset the kind returns inside the function's namespace.

use ipnet::Ipv4Net;

/// One function of a kernel-mode chain, as its kernel form sees it.
#[derive(Debug, Clone, Copy)]
pub struct KernelContext<'a> {
    pub chain: &'a str,
    pub function: &'a str,
    /// The interface facing the ingress side (packets from ingress arrive on it).
    pub ingress_if: &'a str,
    /// The interface facing the egress side.
    pub egress_if: &'a str,
    pub ingress_subnet: Ipv4Net,
    pub egress_subnet: Ipv4Net,
}
