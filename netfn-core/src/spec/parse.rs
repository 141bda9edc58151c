//! TOML text → raw spanned structure → validated [`ChainFile`].
//!
//! Three passes, each reporting every problem it finds: TOML syntax (`parse_recoverable`; if the
//! text is not TOML nothing else is checked), the file's shape (`raw`), and the meaning of the
//! values (`validate`).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use toml::de::DeTable;

use super::model::ChainFile;
use super::raw;
use super::validate::Checker;
use crate::function::{HostNames, Registry};
use crate::spec::diag::{Diagnostics, Reporter};

/// Why a chain file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The OS error is part of the message, not a `source`: printed once.
    #[error("cannot read chain file {path}: {cause}; check the path and its permissions")]
    Read { path: PathBuf, cause: String },
    #[error(
        "chain file {path} is {size} bytes; chain files are at most {MAX_FILE_BYTES} bytes (split it, or move large rule sets into rules files)"
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Largest chain file read, and largest file a chain file names (a firewall's rules file; those
/// are read by their kinds, with [`read_text`]).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads a chain file, or a file one names, as UTF-8 text of at most [`MAX_FILE_BYTES`]: a path
/// naming a device or a pipe, whose size the metadata does not tell (`/dev/zero`), is refused
/// after that many bytes instead of being read until memory runs out.
pub fn read_text(path: &Path) -> io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("it holds more than {MAX_FILE_BYTES} bytes"),
        ));
    }
    // The error read_to_string gives.
    String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Reads and validates a chain file, looking up the host names its settings write with the
/// host's resolver (a WireGuard peer's endpoint): what `validate`, `up` and `apply` read.
pub fn load(path: &Path, registry: &Registry) -> Result<ChainFile, LoadError> {
    load_with(path, registry, &HostNames::system_patient())
}

/// [`load`], with the settings' host names looked up by `host_names` (or, with
/// [`HostNames::form_only`], checked for their form only: `validate --no-lookup`, `graph`).
pub fn load_with(
    path: &Path,
    registry: &Registry,
    host_names: &HostNames,
) -> Result<ChainFile, LoadError> {
    let read = |cause: String| LoadError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    if meta.is_dir() {
        return Err(read("it is a directory".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let text = read_text(path).map_err(|e| read(e.to_string()))?;
    parse_with(path, &text, registry, host_names).map_err(LoadError::Invalid)
}

/// Validates chain-file text; `path` is only used in messages. Host names are not looked up
/// (a setting that writes one is refused, saying so): no query leaves the machine.
pub fn parse(path: &Path, text: &str, registry: &Registry) -> Result<ChainFile, Diagnostics> {
    parse_with(path, text, registry, &HostNames::unresolved())
}

/// [`parse`], with the settings' host names looked up by `host_names`.
pub fn parse_with(
    path: &Path,
    text: &str,
    registry: &Registry,
    host_names: &HostNames,
) -> Result<ChainFile, Diagnostics> {
    let mut rep = Reporter::new(path, text);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for e in &syntax_errors {
            report_syntax_error(text, e, &mut rep);
        }
        return Err(rep.finish());
    }
    let raw = raw::read(root, &mut rep);
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let chains = Checker {
        registry,
        base_dir,
        host_names,
        rep: &mut rep,
    }
    .file(raw);
    if rep.has_errors() {
        return Err(rep.finish());
    }
    Ok(ChainFile {
        path: path.to_path_buf(),
        chains,
        warnings: rep.finish(),
    })
}

fn report_syntax_error(text: &str, e: &toml::de::Error, rep: &mut Reporter) {
    let span = e.span().unwrap_or(text.len()..text.len());
    let message = e.message().trim();
    let (message, hint) = if message == "duplicate key" {
        let key = text.get(span.clone()).unwrap_or_default();
        (
            format!("invalid TOML: duplicate key `{key}`"),
            Some(
                "a key or [table] may appear only once; a repeated section needs double \
                 brackets, like `[[chain]]` or `[[chain.function]]`"
                    .to_string(),
            ),
        )
    } else if message.starts_with("string values must be quoted") {
        (
            format!("invalid TOML: {message}"),
            Some("put text in double quotes, e.g. `fastpath = \"tc\"`".to_string()),
        )
    } else {
        (format!("invalid TOML: {message}"), None)
    };
    rep.error(span, message, hint);
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::spec::FastPath;
    use crate::spec::validate::test_support::{problems, registry};

    fn parse_ok(text: &str) -> ChainFile {
        match parse(Path::new("t.toml"), text, &registry()) {
            Ok(file) => file,
            Err(d) => panic!("expected a valid file, got:\n{d}"),
        }
    }

    const MINIMAL: &str = r#"
[[chain]]
name = "edge"

[chain.ingress]
address = "10.1.0.2/24"

[chain.egress]
address = "10.2.0.2/24"
namespace = "server"

[[chain.function]]
name = "fw1"
kind = "forward"

[[chain.function]]
name = "count"
kind = "counter"
limit = 5
"#;

    #[test]
    fn a_file_without_end_is_refused_not_read_forever() {
        // /dev/zero has no size in its metadata: it was read until memory ran out.
        match load(Path::new("/dev/zero"), &registry()) {
            Err(LoadError::Read { cause, .. }) => {
                assert!(cause.contains("more than 67108864 bytes"), "{cause}")
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_is_a_read_error() {
        let path = std::env::temp_dir().join(format!("netfn-not-utf8-{}.toml", std::process::id()));
        std::fs::write(&path, b"[[chain]]\nname = \"\xff\"\n").expect("write");
        let loaded = load(&path, &registry());
        let _ = std::fs::remove_file(&path);
        match loaded {
            Err(LoadError::Read { cause, .. }) => assert!(cause.contains("UTF-8"), "{cause}"),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_file_gets_its_defaults() {
        let file = parse_ok(MINIMAL);
        assert_eq!(file.path, Path::new("t.toml"));
        assert_eq!(file.chains.len(), 1);
        let chain = file.chain("edge").expect("chain edge");
        assert_eq!(chain.fastpath, FastPath::Kernel);
        assert_eq!(chain.transit.to_string(), "100.64.0.0/16");
        assert_eq!(chain.ingress.address.to_string(), "10.1.0.2/24");
        assert_eq!(chain.ingress.gateway, Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(chain.ingress.namespace, None);
        assert_eq!(chain.egress.gateway, Ipv4Addr::new(10, 2, 0, 1));
        assert_eq!(chain.egress.namespace.as_deref(), Some("server"));
        let functions: Vec<(&str, &str)> = chain
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.kind.as_str()))
            .collect();
        assert_eq!(functions, [("fw1", "forward"), ("count", "counter")]);
        assert_eq!(chain.functions[1].config.kind(), "counter");
        assert_eq!(chain.functions[1].config.record().json(), r#"{"limit":5}"#);
    }

    #[test]
    fn explicit_values_are_kept() {
        let file = parse_ok(
            r#"
[[chain]]
name = "lab-1"
fastpath = "xdp"
transit = "172.16.0.0/30"
[chain.ingress]
address = "192.168.1.1/31"
[chain.egress]
address = "192.168.2.9/24"
gateway = "192.168.2.254"
namespace = "srv"
[[chain.function]]
name = "a"
kind = "forward"
[[chain.function]]
name = "b"
kind = "forward"
[[chain.function]]
name = "c"
kind = "forward"
"#,
        );
        let chain = &file.chains[0];
        assert_eq!(chain.name, "lab-1");
        assert_eq!(chain.fastpath, FastPath::Xdp);
        assert_eq!(chain.transit.to_string(), "172.16.0.0/30");
        // A /31: the gateway is the other address.
        assert_eq!(chain.ingress.gateway, Ipv4Addr::new(192, 168, 1, 0));
        assert_eq!(chain.egress.gateway, Ipv4Addr::new(192, 168, 2, 254));
        assert_eq!(chain.egress.namespace.as_deref(), Some("srv"));
        assert_eq!(chain.functions.len(), 3);
    }

    #[test]
    fn every_error_of_a_file_is_reported_at_once() {
        let text = r#"[[chain]]
name = "edge"
fastpath = "ebpf"
transit = "100.64.0.0/30"
colour = "red"

[chain.ingress]
adress = "10.1.0.2/24"

[chain.egress]
address = "10.1.0.9/16"
gateway = "10.9.0.1"
namespace = "nf-server"

[[chain.function]]
name = "fw1"
kind = "forward"

[[chain.function]]
name = "fw1"
kind = "forwrd"

[[chain.function]]
name = "a/b"
kind = "counter"
limit = 0

[[chain.function]]
kind = "forward"
extra = 1

[[chain]]
name = "edge"
fastpath = 3
[chain.ingress]
address = "10.5.0.0/24"
[chain.egress]
address = "fd00::1/64"
"#;
        let found: Vec<(usize, usize, String)> = problems(text)
            .into_iter()
            .map(|(line, col, message, _)| (line, col, message))
            .collect();
        let expected = [
            (3, 12, "chain `edge`: unknown fastpath `ebpf`"),
            (
                4,
                11,
                "chain `edge`: transit pool 100.64.0.0/30 has room for 2 /31 links, but 4 \
                 functions need 3",
            ),
            (5, 1, "chain `edge`: unknown key `colour` in [[chain]]"),
            (7, 1, "chain `edge`: [chain.ingress] has no `address`"),
            (
                8,
                1,
                "chain `edge`: unknown key `adress` in [chain.ingress]",
            ),
            (
                12,
                11,
                "chain `edge`: egress gateway `10.9.0.1` is outside the egress subnet \
                 10.1.0.0/16",
            ),
            (
                13,
                13,
                "chain `edge`: egress namespace `nf-server` starts with `nf-`, which is \
                 reserved for the namespaces netfn creates",
            ),
            (
                20,
                8,
                "chain `edge`: function name `fw1` is already used by the function at line 16",
            ),
            (21, 8, "chain `edge`, function `fw1`: unknown kind `forwrd`"),
            (
                24,
                8,
                "chain `edge`: function name `a/b` contains '/'; use letters, digits, '-' and \
                 '_'",
            ),
            (
                26,
                9,
                "chain `edge`, function `a/b`: `limit` must be greater than 0, not 0",
            ),
            (28, 1, "chain `edge`, function #4 has no `name`"),
            (
                30,
                1,
                "chain `edge`, function #4: unknown key `extra` in [[chain.function]]",
            ),
            (32, 1, "chain `edge` has no functions"),
            (
                33,
                8,
                "chain name `edge` is already used by the chain at line 2",
            ),
            (
                34,
                12,
                "chain `edge`: `fastpath` must be a string, not an integer",
            ),
            (
                36,
                11,
                "chain `edge`: ingress address `10.5.0.0/24` is the network address of \
                 10.5.0.0/24",
            ),
            (
                38,
                11,
                "chain `edge`: egress address `fd00::1/64` is IPv6; netfn supports IPv4 only \
                 for now",
            ),
        ];
        let expected: Vec<(usize, usize, String)> = expected
            .iter()
            .map(|(l, c, m)| (*l, *c, m.to_string()))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn hints_say_what_to_write_instead() {
        let text = "[[chain]]\nname = \"e\"\n[chain.ingress]\nadress = \"10.1.0.2/24\"\n";
        let hints: Vec<String> = problems(text).into_iter().map(|p| p.3).collect();
        assert!(
            hints.contains(
                &"did you mean `address`? allowed keys: address, gateway, namespace".to_string()
            ),
            "{hints:?}"
        );
    }

    #[test]
    fn all_syntax_errors_are_reported_and_nothing_else() {
        let text = "[[chain]]\nname = \"edge\nfastpath = kernel\ntransit = [1, 2\n";
        let found = problems(text);
        let positions: Vec<(usize, usize)> = found.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(positions, [(2, 13), (3, 12), (4, 16)], "{found:?}");
        assert!(found.iter().all(|p| p.2.starts_with("invalid TOML: ")));
        assert!(
            found[0].2.contains("invalid basic string"),
            "{}",
            found[0].2
        );
        assert!(
            found[1].2.contains("string values must be quoted"),
            "{}",
            found[1].2
        );
        assert!(found[2].2.contains("unclosed array"), "{}", found[2].2);
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let text = "[[chain]]\nname = \"a\"\nname = \"b\"\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0, found[0].1), (3, 1));
        assert_eq!(found[0].2, "invalid TOML: duplicate key `name`");
    }

    #[test]
    fn a_file_without_chains_is_refused() {
        for (text, at) in [
            ("", (1, 1)),
            ("# nothing\n", (1, 1)),
            ("chain = []\n", (1, 9)),
        ] {
            let found = problems(text);
            assert_eq!(found.len(), 1, "{text:?}: {found:?}");
            assert!(
                found[0].2.starts_with("the file defines no chain"),
                "{found:?}"
            );
            assert_eq!((found[0].0, found[0].1), at, "{text:?}");
        }
    }

    #[test]
    fn unknown_top_level_keys_are_reported_with_a_suggestion() {
        let found = problems("[[chains]]\nname = \"edge\"\n");
        let messages: Vec<&str> = found.iter().map(|p| p.2.as_str()).collect();
        assert_eq!(
            messages,
            [
                "the file defines no chain",
                "unknown key `chains` at the top level"
            ]
        );
        assert_eq!((found[1].0, found[1].1), (1, 3));
        assert!(
            found[1].3.starts_with("did you mean `chain`?"),
            "{}",
            found[1].3
        );
    }

    #[test]
    fn a_single_chain_table_is_reported_and_still_checked() {
        let text = "[chain]\nname = \"edge\"\n[chain.ingress]\naddress = \"10.1.0.2/24\"\n\
                    [chain.egress]\naddress = \"10.2.0.2\"\n[[chain.function]]\nname = \"f\"\n\
                    kind = \"forward\"\n";
        let found = problems(text);
        let summary: Vec<(usize, usize, &str)> =
            found.iter().map(|p| (p.0, p.1, p.2.as_str())).collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    1,
                    "`chain` must be an array of tables, not a single table"
                ),
                (
                    6,
                    11,
                    "chain `edge`: egress address `10.2.0.2` has no prefix length"
                ),
            ]
        );
        assert_eq!(
            found[0].3,
            "write each chain as `[[chain]]` (double brackets)"
        );
    }

    #[test]
    fn missing_tables_and_keys_are_reported_at_their_table() {
        let text = "[[chain]]\nfastpath = \"tc\"\n[[chain.function]]\nname = \"f\"\n\
                    [[chain.function]]\nkind = \"forward\"\n";
        let summary: Vec<(usize, usize, String)> = problems(text)
            .into_iter()
            .map(|p| (p.0, p.1, p.2))
            .collect();
        assert_eq!(
            summary,
            [
                (1, 1, "chain #1 has no `name`".to_string()),
                (1, 1, "chain #1 has no `ingress` table".to_string()),
                (1, 1, "chain #1 has no `egress` table".to_string()),
                (3, 1, "chain #1, function `f` has no `kind`".to_string()),
                (5, 1, "chain #1, function #2 has no `name`".to_string()),
            ]
        );
    }

    #[test]
    fn wrong_shapes_are_reported_and_checking_continues() {
        let text = "[[chain]]\nname = 7\ningress = \"x\"\negress = { address = 1 }\n\
                    function = [\"fw1\", { name = \"ok\", kind = \"forward\" }]\n";
        let summary: Vec<(usize, usize, String)> = problems(text)
            .into_iter()
            .map(|p| (p.0, p.1, p.2))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    2,
                    8,
                    "chain #1: `name` must be a string, not an integer".to_string()
                ),
                (
                    3,
                    11,
                    "chain #1: `ingress` must be a table, not a string".to_string()
                ),
                (
                    4,
                    22,
                    "chain #1, egress: `address` must be a string, not an integer".to_string()
                ),
                (
                    5,
                    13,
                    "chain #1, function #1 must be a table, not a string".to_string()
                ),
            ]
        );
    }

    /// `# expect: LINE:COL: substring` lines of a fixture.
    fn expectations(text: &str) -> Vec<(usize, usize, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|rest| {
                let mut parts = rest.splitn(3, ':');
                let mut number = || {
                    parts
                        .next()
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or_else(|| panic!("bad expect line: {rest}"))
                };
                let (line, col) = (number(), number());
                let substring = parts.next().unwrap_or_default().trim().to_string();
                (line, col, substring)
            })
            .collect()
    }

    #[test]
    fn every_invalid_fixture_reports_what_it_expects() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/invalid");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures directory") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable fixture");
            let expected = expectations(&text);
            assert!(
                !expected.is_empty(),
                "{}: no `# expect:` lines",
                path.display()
            );
            let found = match parse(&path, &text, &registry()) {
                Ok(_) => panic!("{}: parsed without errors", path.display()),
                Err(d) => d,
            };
            assert_eq!(
                found.len(),
                expected.len(),
                "{}: expected {expected:?}, found:\n{found}",
                path.display()
            );
            for (d, (line, col, substring)) in found.iter().zip(&expected) {
                let at = (d.position.line, d.position.col);
                assert!(
                    at == (*line, *col) && d.message.contains(substring.as_str()),
                    "{}: expected {line}:{col}: {substring}\nfound:\n{found}",
                    path.display()
                );
                assert!(!d.message.contains('\n'), "one line per message: {d}");
            }
            checked += 1;
        }
        assert!((8..=16).contains(&checked), "{checked} fixtures");
    }
}
