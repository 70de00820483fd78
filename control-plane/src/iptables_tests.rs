//! Unit tests of the capture rules `meshd init-iptables` builds (iptables.rs): flags parsed as
//! istio-iptables parses them, the rule table, ordering, invalid input.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: InitIptablesArgs,
}

fn parse(argv: &[&str]) -> InitIptablesArgs {
    let mut v = vec!["init-iptables"];
    v.extend_from_slice(argv);
    Cli::try_parse_from(v).unwrap().args
}

fn rules(argv: &[&str]) -> Vec<String> {
    build_rules(&parse(argv))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

const ISTIO_DEFAULT: &str = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

#[test]
fn default_flags_match_istio() {
    let istio_flags = [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
    ];
    assert_eq!(build_rules(&parse(&istio_flags)).unwrap(), ISTIO_DEFAULT);
    // No flags at all gives the same rules.
    assert_eq!(build_rules(&parse(&[])).unwrap(), ISTIO_DEFAULT);
    assert_eq!(
        build_rules(&InitIptablesArgs::default()).unwrap(),
        ISTIO_DEFAULT
    );
}

#[test]
fn long_flags_parse() {
    let a = parse(&[
        "--envoy-port",
        "16001",
        "--inbound-capture-port",
        "16006",
        "--proxy-uid",
        "1000",
        "--proxy-gid",
        "2000",
        "--istio-inbound-interception-mode",
        "REDIRECT",
        "--istio-service-cidr",
        "10.0.0.0/8",
        "--istio-service-exclude-cidr",
        "10.1.0.0/16",
        "--istio-inbound-ports",
        "8080",
        "--istio-local-exclude-ports",
        "22",
        "--istio-local-outbound-ports-exclude",
        "5432",
        "--istio-include-outbound-ports",
        "6379",
        "--dry-run",
    ]);
    assert_eq!(a.envoy_port, 16001);
    assert_eq!(a.inbound_capture_port, 16006);
    assert_eq!(a.proxy_uid, "1000");
    assert_eq!(a.proxy_gid.as_deref(), Some("2000"));
    assert!(a.dry_run);
    let r = build_rules(&a).unwrap();
    assert!(r.contains("--uid-owner 1000 -j RETURN"));
    assert!(r.contains("--gid-owner 2000 -j RETURN"));
    assert!(!r.contains("1337"));
    assert!(r.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"));
    assert!(r.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"));
}

struct Case {
    name: &'static str,
    argv: &'static [&'static str],
    present: &'static [&'static str],
    absent: &'static [&'static str],
}

#[test]
fn table() {
    let cases = [
        Case {
            name: "exclude ranges come before the catch-all redirect",
            argv: &["-x", "10.96.0.1/32, 192.168.7.9/24"],
            present: &[
                "-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 192.168.7.0/24 -j RETURN",
                "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            ],
            absent: &[],
        },
        Case {
            name: "include ranges replace the catch-all",
            argv: &["-i", "10.0.0.0/8,240.240.0.0/16"],
            present: &[
                "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -d 240.240.0.0/16 -j ISTIO_REDIRECT",
            ],
            absent: &["-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
        },
        Case {
            name: "empty include captures no outbound ip range",
            argv: &["-i", ""],
            present: &["-A OUTPUT -p tcp -j ISTIO_OUTPUT"],
            absent: &["-j ISTIO_REDIRECT\n", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
        },
        Case {
            name: "outbound port includes",
            argv: &["-i", "", "-q", "6379,11211"],
            present: &[
                "-A ISTIO_OUTPUT -p tcp --dport 6379 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -p tcp --dport 11211 -j ISTIO_REDIRECT",
            ],
            absent: &["-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
        },
        Case {
            name: "outbound port excludes",
            argv: &["-o", "5432"],
            present: &["-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN"],
            absent: &[],
        },
        Case {
            name: "inbound port include list",
            argv: &["-b", "8080,9090", "-d", "22"],
            present: &[
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
                "-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT",
            ],
            absent: &[
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
                "--dport 22 -j RETURN",
            ],
        },
        Case {
            name: "inbound excludes always include the mesh ports",
            argv: &["-d", "22"],
            present: &[
                "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
            ],
            absent: &[],
        },
        Case {
            name: "no inbound capture",
            argv: &["-b", ""],
            present: &["-A OUTPUT -p tcp -j ISTIO_OUTPUT"],
            absent: &["-A PREROUTING", "-j ISTIO_IN_REDIRECT\n-A OUTPUT"],
        },
        Case {
            name: "several proxy uids",
            argv: &["-u", "1337,1338", "-g", "1337"],
            present: &[
                "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --uid-owner 1338 -j RETURN",
                "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            ],
            absent: &["--gid-owner 1338"],
        },
    ];
    for c in cases {
        let text = build_rules(&parse(c.argv)).unwrap();
        for p in c.present {
            assert!(text.contains(p), "{}: missing {p:?} in\n{text}", c.name);
        }
        for a in c.absent {
            assert!(!text.contains(a), "{}: unexpected {a:?} in\n{text}", c.name);
        }
    }
}

#[test]
fn ordering_exclusions_before_redirects() {
    let r = rules(&["-x", "10.1.0.0/16", "-o", "5432", "-q", "6379"]);
    let pos = |needle: &str| r.iter().position(|l| l == needle).unwrap();
    let uid_return = pos("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN");
    let port_exclude = pos("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN");
    let ip_exclude = pos("-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN");
    let port_include = pos("-A ISTIO_OUTPUT -p tcp --dport 6379 -j ISTIO_REDIRECT");
    let catch_all = pos("-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
    assert!(port_exclude < uid_return);
    assert!(uid_return < ip_exclude);
    assert!(ip_exclude < port_include);
    assert!(port_include < catch_all);
    assert_eq!(r.last().unwrap(), "COMMIT");
}

#[test]
fn invalid_input_is_rejected() {
    for argv in [
        &["-m", "TPROXY"][..],
        &["-x", "not-an-ip"],
        &["-i", "10.0.0.0/33"],
        &["-d", "http"],
        &["-u", ""],
        &["-x", "fd00::/8"],
    ] {
        assert!(build_rules(&parse(argv)).is_err(), "{argv:?} accepted");
    }
}
