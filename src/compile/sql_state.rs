//! Metadata of `state.postgresql` and `state.mysql`, read as Dapr's components read it:
//! the same keys, aliases, defaults and connection-string forms, each error at its key.

use super::triggers::{Metadata, Report};
use crate::plan::{MysqlSettings, MysqlTls, PostgresLayout, PostgresSettings, PostgresTls};
use std::time::Duration;

/// libpq keywords fngate's PostgreSQL client honours (`database` is pgx's alias of
/// `dbname`).
const PG_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "connect_timeout",
    "application_name",
    "options",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
];

pub(super) fn postgres_state(
    meta: &mut Metadata<'_>,
    layout: PostgresLayout,
    report: &mut Report<'_>,
) -> Option<PostgresSettings> {
    let mut failed = false;
    let (conn_key, text) = match meta.take("connectionString") {
        Some(t) => ("connectionString", Some(t)),
        None => ("url", meta.take("url")),
    };
    let mut connection = match text {
        Some(text) => match parse_pg_connection(&text) {
            Ok(c) => c,
            Err(e) => {
                meta.error(conn_key, e, report);
                return None;
            }
        },
        None => Vec::new(),
    };
    // The separate keys fill what the connection string leaves out.
    for (key, keyword) in [
        ("host", "host"),
        ("hostaddr", "hostaddr"),
        ("port", "port"),
        ("database", "dbname"),
        ("user", "user"),
        ("password", "password"),
        ("sslRootCert", "sslrootcert"),
    ] {
        if let Some(v) = meta.take(key) {
            if !connection.iter().any(|(k, _)| k == keyword) {
                connection.push((keyword.to_owned(), v));
            }
        }
    }
    if connection.is_empty() {
        meta.error(
            "connectionString",
            "connectionString is required (\"host=... user=... password=... port=5432 database=...\" or postgres://user:password@host:5432/database)".into(),
            report,
        );
        return None;
    }
    let pool_max = take_keyword(&mut connection, "pool_max_conns");
    connection.retain(|(k, _)| !k.starts_with("pool_"));
    if let Some((k, _)) = connection
        .iter()
        .find(|(k, _)| !PG_KEYWORDS.contains(&k.as_str()) && k != "sslrootcert")
    {
        meta.error(
            conn_key,
            format!("connection parameter {k:?} is not supported by fngate"),
            report,
        );
        failed = true;
    }
    let mode = take_keyword(&mut connection, "sslmode").unwrap_or_else(|| "prefer".into());
    let root = match take_keyword(&mut connection, "sslrootcert") {
        Some(path) => match std::fs::read(&path) {
            Ok(pem) => Some(pem),
            Err(e) => {
                meta.error(conn_key, format!("sslrootcert {path}: {e}"), report);
                return None;
            }
        },
        None => None,
    };
    let tls = match (mode.as_str(), root) {
        ("disable", _) => PostgresTls::Disable,
        // `allow` would try plain first; TLS when offered is the closest fngate makes.
        ("allow" | "prefer", _) => PostgresTls::Prefer,
        // libpq: `require` with a root certificate checks the chain, as verify-ca.
        ("require", None) => PostgresTls::Require,
        ("require" | "verify-ca", Some(pem)) => PostgresTls::VerifyCa(pem),
        ("verify-full", Some(pem)) => PostgresTls::VerifyFull(pem),
        ("verify-ca" | "verify-full", None) => {
            meta.error(
                conn_key,
                format!("sslmode={mode} needs sslrootcert (the CA's PEM file)"),
                report,
            );
            return None;
        }
        (other, _) => {
            meta.error(
                conn_key,
                format!(
                    "sslmode={other}: disable, allow, prefer, require, verify-ca or verify-full"
                ),
                report,
            );
            return None;
        }
    };
    if !connection.iter().any(|(k, _)| k == "user") {
        meta.error(conn_key, "the connection names no user".into(), report);
        failed = true;
    }
    for key in ["useAzureAD", "useAWSIAM"] {
        if meta.parse::<bool>(key, "true or false", report) == Some(true) {
            meta.error(
                key,
                format!("{key} is not supported by fngate; use a password"),
                report,
            );
            failed = true;
        }
    }
    let (table, table_prefix) = match layout {
        PostgresLayout::V1 => (
            table_name(meta, "tableName", "state", true, report)?,
            String::new(),
        ),
        PostgresLayout::V2 => {
            let prefix = meta.take("tablePrefix").unwrap_or_default();
            let table = format!("{prefix}state");
            if !valid_table(&table, true) {
                meta.error(
                    "tablePrefix",
                    format!("{prefix:?} does not make a valid table name (letters, digits, _; schema. allowed)"),
                    report,
                );
                return None;
            }
            (table, prefix)
        }
    };
    let metadata_table = table_name(meta, "metadataTableName", "dapr_metadata", true, report)?;
    let timeout = dapr_duration(meta, &["timeout", "timeoutInSeconds"], report)
        .unwrap_or(Some(Duration::from_secs(20)));
    let timeout = match timeout {
        Some(t) if t >= Duration::from_secs(1) => t,
        _ => {
            meta.error(
                "timeout",
                "invalid value for 'timeout': must be greater than 1s".into(),
                report,
            );
            return None;
        }
    };
    let cleanup_interval = dapr_duration(
        meta,
        &["cleanupInterval", "cleanupIntervalInSeconds"],
        report,
    )
    .unwrap_or(Some(Duration::from_secs(3600)));
    // pgxpool's default: four connections, or one per CPU.
    let default_max = pool_max
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(4, |n| n.get().max(4)));
    let max_conns = match meta.parse::<usize>("maxConns", "a number of connections", report) {
        Some(0) => {
            meta.error("maxConns", "must be at least 1".into(), report);
            return None;
        }
        Some(n) => n,
        None => default_max,
    };
    if failed {
        return None;
    }
    Some(PostgresSettings {
        layout,
        tls,
        connection,
        table,
        table_prefix,
        metadata_table,
        timeout,
        cleanup_interval,
        max_conns,
    })
}

fn take_keyword(connection: &mut Vec<(String, String)>, key: &str) -> Option<String> {
    let i = connection.iter().position(|(k, _)| k == key)?;
    Some(connection.remove(i).1)
}

/// `key=value ...` (values may be single-quoted, `\` escapes) or a `postgres://` URL,
/// into libpq keywords in the order given.
pub(crate) fn parse_pg_connection(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.trim();
    let mut out = if let Some(rest) = text
        .strip_prefix("postgres://")
        .or_else(|| text.strip_prefix("postgresql://"))
    {
        parse_pg_url(rest)?
    } else {
        parse_keyword_values(text)?
    };
    for (k, _) in &mut out {
        if k == "database" {
            *k = "dbname".into();
        }
    }
    Ok(out)
}

fn parse_pg_url(rest: &str) -> Result<Vec<(String, String)>, String> {
    let decode =
        |s: &str| percent_decode(s).ok_or_else(|| format!("{s:?} is not valid percent-encoding"));
    let mut out = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), decode(user)?));
            }
            if let Some(p) = password {
                out.push(("password".into(), decode(p)?));
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let (mut names, mut ports) = (Vec::new(), Vec::new());
        for h in hosts.split(',') {
            let (name, port) = match h.strip_prefix('[') {
                Some(v6) => {
                    let (addr, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
                    (addr, after.strip_prefix(':'))
                }
                None => match h.rsplit_once(':') {
                    Some((n, p)) => (n, Some(p)),
                    None => (h, None),
                },
            };
            names.push(decode(name)?);
            if let Some(p) = port {
                ports.push(p.to_owned());
            }
        }
        out.push(("host".into(), names.join(",")));
        if !ports.is_empty() {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if !path.is_empty() {
        out.push(("dbname".into(), decode(path)?));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn parse_keyword_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "{key:?} has no value (expected key=value pairs or a postgres:// URL)"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("the value of {key:?} has no closing quote")),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or("a trailing \\")?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("a trailing \\")?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Letters, digits and `_` (not starting with a digit); with `schema_allowed`, one
/// `schema.` in front. Names are put into statements as they are, so nothing else passes.
fn valid_table(name: &str, schema_allowed: bool) -> bool {
    let ident = |s: &str| {
        !s.is_empty()
            && !s.as_bytes()[0].is_ascii_digit()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match name.split_once('.') {
        Some((schema, table)) if schema_allowed => ident(schema) && ident(table),
        Some(_) => false,
        None => ident(name),
    }
}

fn table_name(
    meta: &mut Metadata<'_>,
    key: &str,
    default: &str,
    schema_allowed: bool,
    report: &mut Report<'_>,
) -> Option<String> {
    let name = meta.take(key).unwrap_or_else(|| default.to_owned());
    if valid_table(&name, schema_allowed) {
        Some(name)
    } else {
        meta.error(
            key,
            format!(
                "{name:?} is not a valid name (letters, digits and _{})",
                if schema_allowed {
                    "; schema.table allowed"
                } else {
                    ""
                }
            ),
            report,
        );
        None
    }
}

/// Dapr's duration metadata: a Go duration (`30s`, `1h`) or a whole number of seconds,
/// under its name or an alias. `Some(None)`: zero or negative (disabled).
fn dapr_duration(
    meta: &mut Metadata<'_>,
    keys: &[&str],
    report: &mut Report<'_>,
) -> Option<Option<Duration>> {
    let (key, v) = keys.iter().find_map(|k| meta.take(k).map(|v| (*k, v)))?;
    if let Ok(n) = v.parse::<i64>() {
        return Some((n > 0).then(|| Duration::from_secs(n as u64)));
    }
    if v.starts_with('-') {
        return Some(None);
    }
    match crate::api::parse_duration(&v) {
        Ok(d) => Some(d),
        Err(_) => {
            meta.error(
                key,
                format!("{v:?} is not a duration such as 30s or 1h, nor a number of seconds"),
                report,
            );
            None
        }
    }
}

/// DSN parameters that only steer the Go driver itself; accepted and not sent.
const GO_DRIVER_PARAMS: &[&str] = &[
    "allowNativePasswords",
    "allowCleartextPasswords",
    "allowOldPasswords",
    "allowAllFiles",
    "allowFallbackToPlaintext",
    "checkConnLiveness",
    "clientFoundRows",
    "columnsWithAlias",
    "interpolateParams",
    "loc",
    "maxAllowedPacket",
    "multiStatements",
    "parseTime",
    "readTimeout",
    "rejectReadOnly",
    "writeTimeout",
    "charset",
    "collation",
    "connectionAttributes",
];

pub(super) fn mysql_state(
    meta: &mut Metadata<'_>,
    report: &mut Report<'_>,
) -> Option<MysqlSettings> {
    let Some(dsn) = meta.take("connectionString") else {
        meta.error(
            "connectionString",
            "missing connection string (user:password@tcp(host:3306)/?allowNativePasswords=true)"
                .into(),
            report,
        );
        return None;
    };
    let parsed = match parse_go_dsn(&dsn) {
        Ok(p) => p,
        Err(e) => {
            meta.error("connectionString", e, report);
            return None;
        }
    };
    let pem = match (meta.take("pemContents"), meta.take("pemPath")) {
        (Some(c), _) => Some(c.into_bytes()),
        (None, Some(path)) => match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                meta.error("pemPath", format!("cannot read {path}: {e}"), report);
                return None;
            }
        },
        (None, None) => None,
    };
    let tls = match parsed.tls.as_deref() {
        None | Some("false") => MysqlTls::Off,
        Some("skip-verify") => MysqlTls::SkipVerify,
        Some("custom") => match pem {
            Some(p) => MysqlTls::CustomRoot(p),
            None => {
                meta.error(
                    "connectionString",
                    "tls=custom needs the server's CA in pemPath or pemContents".into(),
                    report,
                );
                return None;
            }
        },
        Some(other) => {
            meta.error(
                "connectionString",
                format!("tls={other} is not supported by fngate: use tls=custom with pemPath or pemContents, tls=skip-verify or tls=false"),
                report,
            );
            return None;
        }
    };
    let schema = table_name(meta, "schemaName", "dapr_state_store", false, report)?;
    let table = table_name(meta, "tableName", "state", false, report)?;
    let metadata_table = table_name(meta, "metadataTableName", "dapr_metadata", false, report)?;
    let timeout = match meta.parse::<i64>("timeoutInSeconds", "a whole number of seconds", report) {
        Some(n) if n > 0 => Duration::from_secs(n as u64),
        _ => Duration::from_secs(20),
    };
    let cleanup_interval = dapr_duration(meta, &["cleanupInterval"], report)
        .unwrap_or(Some(Duration::from_secs(3600)));
    Some(MysqlSettings {
        user: parsed.user,
        password: parsed.password,
        host: parsed.host,
        port: parsed.port,
        schema,
        table,
        metadata_table,
        timeout,
        cleanup_interval,
        tls,
        session_variables: parsed.session_variables,
    })
}

#[derive(Debug, PartialEq)]
pub(crate) struct GoDsn {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub tls: Option<String>,
    pub session_variables: Vec<(String, String)>,
}

/// go-sql-driver's DSN: `[user[:password]@][tcp[(host:port)]]/[dbname][?param=value&...]`.
/// The database must be left empty: `schemaName` names it, as in Dapr.
pub(crate) fn parse_go_dsn(dsn: &str) -> Result<GoDsn, String> {
    let slash = dsn
        .rfind('/')
        .ok_or("not a DSN: user:password@tcp(host:3306)/ has a /")?;
    let (head, tail) = (&dsn[..slash], &dsn[slash + 1..]);
    let (dbname, params) = tail.split_once('?').unwrap_or((tail, ""));
    if !dbname.is_empty() {
        return Err(format!(
            "the DSN names database {dbname:?}; leave it empty (…/?…) and set schemaName"
        ));
    }
    let (userinfo, address) = match head.rfind('@') {
        Some(at) => (Some(&head[..at]), &head[at + 1..]),
        None => (None, head),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
            None => (u.to_owned(), None),
        },
        None => ("root".to_owned(), None),
    };
    let (net, addr) = match address.split_once('(') {
        Some((net, rest)) => (
            net,
            rest.strip_suffix(')')
                .ok_or("the address has no closing )")?,
        ),
        None => (address, ""),
    };
    if !matches!(net, "" | "tcp" | "tcp4" | "tcp6") {
        return Err(format!(
            "network {net:?} is not supported by fngate; use tcp(host:port)"
        ));
    }
    let (host, port) = if addr.is_empty() {
        ("127.0.0.1".to_owned(), 3306)
    } else {
        let (h, p) = match addr.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{p:?} is not a port"))?,
            ),
            _ => (addr, 3306),
        };
        (h.trim_matches(['[', ']']).to_owned(), p)
    };
    let mut tls = None;
    let mut session_variables = Vec::new();
    for pair in params.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(&v.replace('+', " "))
            .ok_or_else(|| format!("{k}: bad percent-encoding"))?;
        match k {
            "tls" => tls = Some(v),
            "timeout" => {}
            k if GO_DRIVER_PARAMS.contains(&k) => {}
            k => {
                if !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!(
                        "{k:?} is not a DSN parameter nor a system variable"
                    ));
                }
                session_variables.push((k.to_owned(), v));
            }
        }
    }
    Ok(GoDsn {
        user,
        password,
        host,
        port,
        tls,
        session_variables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_connection_strings_in_both_forms() {
        let kv = parse_pg_connection(
            "host=localhost user=postgres password='s3cr\\'t x' port=5432 connect_timeout=10 database=my_db",
        )
        .unwrap();
        assert_eq!(
            kv,
            [
                ("host", "localhost"),
                ("user", "postgres"),
                ("password", "s3cr't x"),
                ("port", "5432"),
                ("connect_timeout", "10"),
                ("dbname", "my_db"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let url = parse_pg_connection(
            "postgres://app:p%40ss@db.example:6432/state?sslmode=disable&pool_max_conns=8",
        )
        .unwrap();
        assert_eq!(
            url,
            [
                ("user", "app"),
                ("password", "p@ss"),
                ("host", "db.example"),
                ("port", "6432"),
                ("dbname", "state"),
                ("sslmode", "disable"),
                ("pool_max_conns", "8"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(parse_pg_connection("host=x user").is_err());
        assert!(parse_pg_connection("password='open").is_err());
    }

    #[test]
    fn go_dsn_as_the_mysql_driver_reads_it() {
        let d = parse_go_dsn("dapr:p@ss:w0rd@tcp(db.local:3307)/?allowNativePasswords=true&tls=custom&sql_mode=%27ANSI%27").unwrap();
        assert_eq!(d.user, "dapr");
        assert_eq!(d.password.as_deref(), Some("p@ss:w0rd"));
        assert_eq!((d.host.as_str(), d.port), ("db.local", 3307));
        assert_eq!(d.tls.as_deref(), Some("custom"));
        assert_eq!(
            d.session_variables,
            vec![("sql_mode".to_owned(), "'ANSI'".to_owned())]
        );
        let d = parse_go_dsn("root@tcp(127.0.0.1)/").unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.password),
            ("127.0.0.1", 3306, None)
        );
        assert!(parse_go_dsn("root@tcp(h:3306)/mydb")
            .unwrap_err()
            .contains("schemaName"));
        assert!(parse_go_dsn("root@unix(/tmp/s)/").is_err());
        assert!(parse_go_dsn("no-slash").is_err());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(valid_table("state", false));
        assert!(valid_table("app.state_v2", true));
        assert!(!valid_table("app.state", false));
        assert!(!valid_table("state; drop table x", true));
        assert!(!valid_table("1state", true));
    }
}
