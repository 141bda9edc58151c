//! An upgraded netfn and the chains an older one brought up: `netfn apply` loads the new build's
//! eBPF programs in place of the running ones (forwarder, stages, kernel mode's counter),
//! keeping connections and losing no datagram; a kept table whose layout the new build changed
//! refuses that, and the chain runs on.
//!
//! "Another build" is the chain's record naming one (or none, as records from before builds were
//! recorded): the programs the test's netfn loads are then the upgrade, whatever their bytes.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;

use aya::maps::{MapData, MapInfo};
use aya::programs::ProgramInfo;
use netfn_core::chain::state;
use netfn_core::plan::names::chain_bpf_dir;
use netfn_tests::loss::SenderRing;
use netfn_tests::traffic::sequenced_stream_during;
use netfn_tests::{
    ChainGuard, EGRESS_ADDR, TempDir, alone, netfn, netfn_ok, tcp_connect_from, tcp_listener_in,
    unique_chain,
};

/// A chain with one firewall, `fw1`: default drop, TCP 80 and UDP 7000 accepted. Under default
/// drop, a connection's later packets pass only while the firewall remembers it: so a
/// connection that works across a reload shows that the connection table carried over.
fn chain_file(name: &str, mode: &str) -> String {
    format!(
        "[[chain]]\nname = \"{name}\"\nfastpath = \"{mode}\"\n\n[chain.ingress]\naddress = \
         \"10.81.1.2/24\"\n\n[chain.egress]\naddress = \"10.81.2.2/24\"\n\n[[chain.function]]\n\
         name = \"fw1\"\nkind = \"firewall\"\ndefault = \"drop\"\n\n[[chain.function.rule]]\n\
         name = \"web\"\nproto = \"tcp\"\ndport = 80\naction = \"accept\"\n\n\
         [[chain.function.rule]]\nname = \"stream\"\nproto = \"udp\"\ndport = 7000\n\
         action = \"accept\"\n"
    )
}

/// Makes the chain's record say its programs came from `build` (None: a record from before
/// builds were recorded), as the record of a chain an older netfn brought up does.
fn record_programs_of(chain: &str, build: Option<&str>) {
    let mut record = state::load(chain)
        .expect("read the record")
        .expect("the chain is recorded");
    record.programs = build.map(str::to_string);
    state::save(&mut record).expect("write the record");
}

fn recorded_programs(chain: &str) -> Option<String> {
    state::load(chain)
        .expect("read the record")
        .expect("the chain is recorded")
        .programs
}

/// The kernel's id of the program pinned at `pin` (a new load, a new id).
fn program_id(pin: &Path) -> u32 {
    ProgramInfo::from_pin(pin)
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()))
        .id()
}

fn map_id(pin: &Path) -> u32 {
    MapInfo::from_pin(pin)
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()))
        .id()
}

/// The program that stands for the chain's programs: the forwarder, or kernel mode's counter.
fn main_program(chain: &str, mode: &str) -> PathBuf {
    chain_bpf_dir(chain).join(match mode {
        "tc" => "nf_fwd_tc",
        "xdp" => "nf_fwd_xdp",
        _ => "nf_count",
    })
}

/// The firewall's pinned maps (it is the chain's first function: slot 0).
fn firewall_map(chain: &str, name: &str) -> PathBuf {
    chain_bpf_dir(chain).join("fn0").join(name)
}

/// A TCP echo server in the egress namespace on port 80, for as long as the test runs.
fn echo_server(chain: &str) {
    let listener = tcp_listener_in(
        &format!("nf-{chain}-egress"),
        SocketAddrV4::new(EGRESS_ADDR, 80),
    );
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn echo(s: &mut TcpStream, what: &[u8]) -> Result<(), String> {
    s.write_all(what).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back == what {
        Ok(())
    } else {
        Err(format!("echoed {back:?}"))
    }
}

fn connect(chain: &str) -> TcpStream {
    tcp_connect_from(
        &format!("nf-{chain}-ingress"),
        SocketAddrV4::new(EGRESS_ADDR, 80),
    )
}

/// How many connections rule `rule` of `fw1` accepted (`by rule` in status: "web 2, stream 1").
fn rule_count(chain: &str, rule: &str) -> u64 {
    netfn_tests::status_details(chain, "fw1")
        .into_iter()
        .filter(|(label, _)| label == "by rule")
        .flat_map(|(_, value)| {
            value
                .split(", ")
                .filter_map(|r| r.strip_prefix(&format!("{rule} "))?.parse().ok())
                .collect::<Vec<u64>>()
        })
        .sum()
}

fn apply_after_an_upgrade_in(mode: &str) {
    let _turn = alone();
    let chain = unique_chain(&format!("ug{}", &mode[..1]));
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &chain_file(&chain, mode));
    let file_arg = file.to_string_lossy().into_owned();
    let _guard = ChainGuard::up(&chain, &file);
    echo_server(&chain);
    let ours = recorded_programs(&chain).expect("up records the build of the programs it loaded");
    assert_eq!(
        netfn_ok(&["apply", &file_arg]).trim(),
        format!("chain {chain}: unchanged; nothing to do"),
        "{mode}: nothing to load while the chain runs this netfn's programs"
    );

    // A connection made under the old programs, and a stream that runs across the reload.
    let mut before = connect(&chain);
    echo(&mut before, b"before").expect("the connection works before the reload");
    let program = main_program(&chain, mode);
    let old_program = program_id(&program);
    let stage = (mode != "kernel").then(|| {
        (
            map_id(&firewall_map(&chain, "NF_FW_RULE_COUNTERS")),
            map_id(&firewall_map(&chain, "NF_FW_CT")),
        )
    });

    record_programs_of(&chain, None);
    let status = netfn_ok(&["status", &chain]);
    assert!(
        status.contains("programs: another netfn build's (not recorded)")
            && status.contains(&format!("`netfn apply {file_arg}`")),
        "{mode}: status says the chain runs another build's programs:\n{status}"
    );
    let ingress = format!("nf-{chain}-ingress");
    let sender = SenderRing::before(&chain, &ingress, "nf-out");
    let mut applied = String::new();
    let stream = sequenced_stream_during(&chain, 6_000, 3_000, 7000, || {
        applied = netfn_ok(&["apply", &file_arg]);
    });
    assert!(
        applied.contains("loaded this netfn's programs")
            && applied.contains(&format!("load this netfn's eBPF programs (build {ours})")),
        "{mode}: {applied}"
    );

    // New programs, the same kept state.
    assert_ne!(
        program_id(&program),
        old_program,
        "{mode}: the chain's program was loaded again"
    );
    if let Some((counters, connections)) = stage {
        assert_ne!(
            map_id(&firewall_map(&chain, "NF_FW_RULE_COUNTERS")),
            counters,
            "{mode}: the firewall's stage is a new instance"
        );
        assert_eq!(
            map_id(&firewall_map(&chain, "NF_FW_CT")),
            connections,
            "{mode}: the new instance kept the connection table"
        );
    }
    let status = netfn_ok(&["status", &chain]);
    echo(&mut before, b"after").unwrap_or_else(|e| {
        panic!("{mode}: the connection made before the reload broke: {e}\n{status}")
    });
    let lost = stream.lost();
    // Inside the test VM only: frames the sender's veth ring dropped while the verifier had the
    // one emulated CPU, before any netfn program saw them (see netfn_tests::loss).
    let explained_in_vm = sender.explains(mode, lost.len(), &format!("{mode} reload"));
    assert!(
        lost.is_empty() || explained_in_vm,
        "{mode}: {} of {} datagrams lost across the reload (first {:?})\n{status}",
        lost.len(),
        stream.sent,
        &lost[..lost.len().min(10)]
    );
    assert_eq!(recorded_programs(&chain).as_deref(), Some(ours.as_str()));
    assert!(!status.contains("programs: another"), "{status}");
    echo(&mut connect(&chain), b"new").expect("a new connection works after the reload");
    if mode != "kernel" {
        assert_eq!(
            rule_count(&chain, "web"),
            2,
            "{mode}: the rule's count goes on across the reload (the connection before it, and \
             the new one)\n{}",
            netfn_ok(&["status", &chain])
        );
    }

    // A record naming another build is an upgrade too; then nothing is left to load.
    record_programs_of(&chain, Some("0123456789abcdef"));
    let dry = netfn_ok(&["apply", "--dry-run", &file_arg]);
    assert!(
        dry.contains("(build 0123456789abcdef)"),
        "{mode}: the dry run names the running build: {dry}"
    );
    let reloaded = program_id(&program);
    netfn_ok(&["apply", &file_arg]);
    assert_ne!(program_id(&program), reloaded, "{mode}");
    assert_eq!(
        netfn_ok(&["apply", &file_arg]).trim(),
        format!("chain {chain}: unchanged; nothing to do")
    );
}

#[test]
fn tc_apply_after_an_upgrade_loads_its_programs_and_keeps_connections() {
    apply_after_an_upgrade_in("tc");
}

#[test]
fn xdp_apply_after_an_upgrade_loads_its_programs_and_keeps_connections() {
    apply_after_an_upgrade_in("xdp");
}

#[test]
fn kernel_apply_after_an_upgrade_loads_its_counter_program() {
    apply_after_an_upgrade_in("kernel");
}

/// A running agent adopts the chain again once an apply has loaded new programs: its log tasks
/// read the programs' buffers, and the replaced programs write to theirs no more. (The plan is
/// the same: the agent used to keep the chain as it was.)
#[test]
fn the_agent_adopts_a_chain_again_when_its_programs_are_reloaded() {
    let _turn = alone();
    let chain = unique_chain("uga");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &chain_file(&chain, "tc"));
    let file_arg = file.to_string_lossy().into_owned();
    let _guard = ChainGuard::up(&chain, &file);
    // The chain as an older netfn left it, when the agent adopts it.
    record_programs_of(&chain, Some("0123456789abcdef"));
    let agent = netfn_tests::agent::Agent::start(&dir.0, &chain, &["--no-probe"]);
    let again = "letting go of the chain: its record changed; adopting it again";
    let waited = |what: &str| {
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(10) {
            if agent.log_text().contains(what) {
                return true;
            }
            thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    assert!(
        waited(&format!(
            "adopting the chain (it runs in the kernel; nothing is created) chain=\"{chain}\""
        )),
        "the agent adopts the chain:\n{}",
        agent.log_text()
    );
    netfn_ok(&["apply", &file_arg]);
    assert!(
        waited(again),
        "the agent adopts the reloaded chain again:\n{}",
        agent.log_text()
    );
}

/// Puts a map as an older build might have made it in the place of the one pinned at `pin`: the
/// same type and key, with values `grow_value` bytes and `grow_entries` entries more and the
/// flags `flip_flags` flipped. Returns the replaced map's info.
fn pin_an_older_map(pin: &Path, grow_value: u32, grow_entries: u32, flip_flags: u32) -> MapInfo {
    let info = MapInfo::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    pin_a_map_like(pin, &info, grow_value, grow_entries, flip_flags);
    info
}

/// Pins at `pin` (in the place of what is there) a new, empty map like `info`, changed as
/// [`pin_an_older_map`] says.
fn pin_a_map_like(pin: &Path, info: &MapInfo, grow_value: u32, grow_entries: u32, flip: u32) {
    let older = aya_obj::Map::new_from_params(
        info.map_type().expect("a known map type") as u32,
        info.key_size(),
        info.value_size() + grow_value,
        info.max_entries() + grow_entries,
        info.map_flags() ^ flip,
    );
    std::fs::remove_file(pin).expect("unpin the map");
    MapData::create(older, "older", None)
        .expect("create a map of the older shape")
        .pin(pin)
        .expect("pin it in the map's place");
}

/// Kept maps as an older netfn made them, each in turn: a connection table with other entries
/// (this netfn's programs cannot read it), one with other flags (an LRU that evicts per CPU),
/// an array with another number of entries (the programs find entries by index). The reload is
/// refused, dry or not, nothing is loaded, and the chain runs on. Then a kept hash table with
/// more room, which is no reason: the reload keeps it. (The flags and the number of entries were
/// not compared: those reloads went through.)
#[test]
fn an_upgrade_that_changed_a_kept_map_is_refused_and_the_chain_runs_on() {
    let _turn = alone();
    let chain = unique_chain("ugl");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &chain_file(&chain, "tc"));
    let file_arg = file.to_string_lossy().into_owned();
    let _guard = ChainGuard::up(&chain, &file);
    echo_server(&chain);
    let mut before = connect(&chain);
    echo(&mut before, b"before").expect("the connection works");
    record_programs_of(&chain, Some("0123456789abcdef"));
    let program = main_program(&chain, "tc");
    let running = program_id(&program);

    let ct_value = MapInfo::from_pin(firewall_map(&chain, "NF_FW_CT"))
        .expect("the connection table")
        .value_size();
    let grown = format!("{}-byte values", ct_value + 8);
    let no_common_lru = aya_obj::generated::BPF_F_NO_COMMON_LRU;
    for (map, grow_value, grow_entries, flip, said) in [
        ("NF_FW_CT", 8, 0, 0, grown.as_str()),
        ("NF_FW_CT", 0, 0, no_common_lru, "flags BPF_F_NO_COMMON_LRU"),
        ("NF_FW_STATS", 0, 1, 0, "has 2 entries"),
    ] {
        let pin = firewall_map(&chain, map);
        let info = pin_an_older_map(&pin, grow_value, grow_entries, flip);
        for args in [
            &["apply", "--dry-run", &file_arg][..],
            &["apply", &file_arg],
        ] {
            let out = netfn(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{map}: {args:?}: {stderr}");
            assert!(
                stderr.contains(&pin.display().to_string())
                    && stderr.contains(&format!("`{map}`"))
                    && stderr.contains(said)
                    && stderr.contains("down and up again"),
                "{map}: {args:?}: the error names the map, what differs and what to do:\n{stderr}"
            );
        }
        assert_eq!(
            program_id(&program),
            running,
            "{map}: nothing was loaded: the check comes first"
        );
        assert_eq!(
            recorded_programs(&chain).as_deref(),
            Some("0123456789abcdef"),
            "{map}: the record still names the running build"
        );
        // A map of this netfn's shape again (an empty one: the running programs hold theirs).
        pin_a_map_like(&pin, &info, 0, 0, 0);
    }
    // The old programs still hold the old table: the connection goes on.
    echo(&mut before, b"after").expect("the chain runs on");

    let pin = firewall_map(&chain, "NF_FW_CT");
    pin_an_older_map(&pin, 0, 64, 0);
    let roomier = map_id(&pin);
    let applied = netfn_ok(&["apply", &file_arg]);
    assert!(
        applied.contains("loaded this netfn's programs"),
        "{applied}"
    );
    assert_ne!(program_id(&program), running, "the reload went through");
    assert_eq!(map_id(&pin), roomier, "the new instance kept the table");
}

/// A map the chain's programs share (the forwarder's, which the stages use too) that an older
/// netfn sized otherwise: the attach would replace it and leave the running stages on the old
/// one (an empty stage array for the new forwarder), so the reload is refused.
#[test]
fn an_upgrade_that_resized_a_shared_map_is_refused_and_the_chain_runs_on() {
    let _turn = alone();
    let chain = unique_chain("ugs");
    let dir = TempDir::new(&chain);
    let file = dir.write("chain.toml", &chain_file(&chain, "tc"));
    let file_arg = file.to_string_lossy().into_owned();
    let _guard = ChainGuard::up(&chain, &file);
    echo_server(&chain);
    let mut before = connect(&chain);
    echo(&mut before, b"before").expect("the connection works");

    let pin = chain_bpf_dir(&chain).join("fwd_unknown");
    let info = pin_an_older_map(&pin, 0, 1, 0);
    record_programs_of(&chain, Some("0123456789abcdef"));
    let program = main_program(&chain, "tc");
    let running = program_id(&program);

    let out = netfn(&["apply", &file_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`NF_FWD_UNKNOWN`")
            && stderr.contains(&format!("has {} entries", info.max_entries() + 1))
            && stderr.contains("down and up again"),
        "the error names the map, both sizes and what to do:\n{stderr}"
    );
    assert_eq!(program_id(&program), running, "nothing was loaded");
    echo(&mut before, b"after").expect("the chain runs on");
}
