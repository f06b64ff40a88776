//! The `LISTENING {json}` line: how a binary tells whoever started it which ports it bound.
//!
//! Every binary prints exactly one such line to stdout once each socket it owns accepts
//! connections, e.g. `LISTENING {"outbound":"127.0.0.1:40123","admin":"127.0.0.1:40124"}`:
//! a JSON object from listener name to `IP:PORT`. Any listen address may use port 0; the line
//! carries the port the kernel chose. [`announce`] writes it (once, at start-up, so its cost
//! does not matter); [`Listening::parse`] reads it back, with an error naming what is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{AddrParseError, SocketAddr};
use std::str::FromStr;

/// What every `LISTENING` line starts with (the JSON object follows).
pub const PREFIX: &str = "LISTENING ";

/// Prints the `LISTENING` line for `listeners` (name, bound address) to stdout and flushes it,
/// so a parent reading the pipe sees it at once.
pub fn announce<'a>(listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    write(&mut out, listeners)?;
    out.flush()
}

/// Writes the `LISTENING` line for `listeners`, in their order, with its newline.
pub fn write<'a, W: Write>(
    out: &mut W,
    listeners: impl IntoIterator<Item = (&'a str, SocketAddr)>,
) -> io::Result<()> {
    out.write_all(PREFIX.as_bytes())?;
    out.write_all(b"{")?;
    for (i, (name, addr)) in listeners.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, name).map_err(io::Error::other)?;
        // An address's text (digits, dots, colons, brackets, `%scope`) needs no escaping.
        write!(out, ":\"{addr}\"")?;
    }
    out.write_all(b"}\n")
}

/// The listeners a `LISTENING` line names: listener name -> bound address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    addrs: BTreeMap<String, SocketAddr>,
}

/// Why a line is not a valid `LISTENING` line, or lacks a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListeningError {
    #[error("{line:?} does not start with {PREFIX:?}")]
    NoPrefix { line: String },
    #[error(
        "the LISTENING line's payload is not a JSON object of listener names ({source}): {json}"
    )]
    NotAnObject {
        json: String,
        source: serde_json::Error,
    },
    #[error("the LISTENING line gives listener {name:?} as {value}, not as a string \"IP:PORT\"")]
    NotAString { name: String, value: String },
    #[error("the LISTENING line gives listener {name:?} as {value:?}, not as IP:PORT ({source})")]
    BadAddress {
        name: String,
        value: String,
        source: AddrParseError,
    },
    #[error("the LISTENING line has no listener {name:?}; it names {}", names(.present))]
    Missing { name: String, present: Vec<String> },
}

fn names(present: &[String]) -> String {
    if present.is_empty() {
        "none".to_owned()
    } else {
        present.join(", ")
    }
}

impl Listening {
    /// Parses a whole line (`LISTENING {...}`; surrounding whitespace and the newline are
    /// ignored). Every value must be an `IP:PORT` string.
    pub fn parse(line: &str) -> Result<Listening, ListeningError> {
        let json = line
            .trim()
            .strip_prefix(PREFIX.trim_end())
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .ok_or_else(|| ListeningError::NoPrefix {
                line: line.to_owned(),
            })?
            .trim();
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|source| ListeningError::NotAnObject {
                json: json.to_owned(),
                source,
            })?;
        let mut addrs = BTreeMap::new();
        for (name, value) in object {
            let Some(text) = value.as_str() else {
                return Err(ListeningError::NotAString {
                    name,
                    value: value.to_string(),
                });
            };
            match text.parse() {
                Ok(addr) => {
                    addrs.insert(name, addr);
                }
                Err(source) => {
                    return Err(ListeningError::BadAddress {
                        name,
                        value: text.to_owned(),
                        source,
                    })
                }
            }
        }
        Ok(Listening { addrs })
    }

    /// The address of listener `name`, if the line names it.
    pub fn get(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    /// The address of listener `name`, or an error naming the listeners the line does have.
    pub fn addr(&self, name: &str) -> Result<SocketAddr, ListeningError> {
        self.get(name).ok_or_else(|| ListeningError::Missing {
            name: name.to_owned(),
            present: self.addrs.keys().cloned().collect(),
        })
    }

    /// Every listener, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, SocketAddr)> + '_ {
        self.addrs.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

impl FromStr for Listening {
    type Err = ListeningError;
    fn from_str(line: &str) -> Result<Listening, ListeningError> {
        Listening::parse(line)
    }
}

impl fmt::Display for Listening {
    /// The line itself, without its newline (what [`write`] prints).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::new();
        write(&mut buf, self.iter()).map_err(|_| fmt::Error)?;
        f.write_str(String::from_utf8_lossy(&buf).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn what_is_written_reads_back() {
        let listeners = [
            ("outbound", addr("127.0.0.1:1")),
            ("inbound", addr("0.0.0.0:2")),
            ("admin", addr("[::1]:3")),
        ];
        let mut out = Vec::new();
        write(&mut out, listeners).expect("writing to a Vec");
        let line = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            line,
            "LISTENING {\"outbound\":\"127.0.0.1:1\",\"inbound\":\"0.0.0.0:2\",\"admin\":\"[::1]:3\"}\n",
            "one line, listeners in the given order"
        );
        let l = Listening::parse(&line).expect("the writer's line parses");
        for (name, want) in listeners {
            assert_eq!(l.addr(name).expect(name), want, "{name} reads back");
        }
        assert_eq!(l.len(), 3, "nothing else");
        assert_eq!(
            Listening::parse(&l.to_string()).expect("Display is a line too"),
            l,
            "Display writes the same contract"
        );
    }

    #[test]
    fn an_empty_object_is_a_line_without_listeners() {
        let l = Listening::parse("LISTENING {}").expect("no listeners is valid");
        assert!(l.is_empty(), "no listeners");
        let err = l.addr("app").expect_err("app is missing");
        assert_eq!(
            err.to_string(),
            "the LISTENING line has no listener \"app\"; it names none",
            "the error names what is missing"
        );
    }

    #[test]
    fn a_missing_listener_names_the_ones_present() {
        let l = Listening::parse(r#"LISTENING {"app":"127.0.0.1:4242"}"#).expect("valid");
        let msg = l.addr("admin").expect_err("no admin").to_string();
        assert!(
            msg.contains("\"admin\"") && msg.contains("it names app"),
            "{msg}"
        );
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("hello", "does not start with"),
            ("LISTENING", "does not start with"),
            ("LISTENINGS {}", "does not start with"),
            ("LISTENING [1]", "not a JSON object"),
            ("LISTENING {", "not a JSON object"),
            (
                r#"LISTENING {"app":4242}"#,
                "listener \"app\" as 4242, not as a string",
            ),
            (
                r#"LISTENING {"app":"localhost:80"}"#,
                "listener \"app\" as \"localhost:80\", not as IP:PORT",
            ),
            (r#"LISTENING {"app":"127.0.0.1"}"#, "not as IP:PORT"),
        ];
        for (line, want) in cases {
            let msg = Listening::parse(line).expect_err(line).to_string();
            assert!(msg.contains(want), "{line:?}: {msg:?} should say {want:?}");
        }
    }

    #[test]
    fn surrounding_whitespace_and_the_newline_are_ignored() {
        let l = Listening::parse("LISTENING   {\"app\":\"127.0.0.1:1\"}  \r\n").expect("valid");
        assert_eq!(l.get("app"), Some(addr("127.0.0.1:1")), "app read");
    }

    #[test]
    fn names_are_escaped_as_json() {
        let mut out = Vec::new();
        write(&mut out, [("a\"b", addr("127.0.0.1:1"))]).expect("write");
        let line = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            line, "LISTENING {\"a\\\"b\":\"127.0.0.1:1\"}\n",
            "quoted name"
        );
        assert!(
            Listening::parse(&line)
                .expect("parses")
                .get("a\"b")
                .is_some(),
            "and reads back"
        );
    }
}
