//! Passwords kept out of connection strings, the way libpq keeps them: a
//! password file (`passfile=` in the connection string, else `PGPASSFILE`,
//! else `~/.pgpass`) of `host:port:database:user:password` lines, `*`
//! matching anything, `\:` and `\\` escaped. The libpq tools read the same
//! file themselves, so one mounted Secret serves every connection. Never
//! logs or returns a password anywhere but into the driver's config.

use std::path::{Path, PathBuf};

use tokio_postgres::Config;
use tokio_postgres::config::Host;

use crate::{Error, Result};

/// The `passfile` a connection string names, if any.
pub(crate) fn named(conn: &str) -> Option<PathBuf> {
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let url = url::Url::parse(conn).ok()?;
        return url
            .query_pairs()
            .find(|(key, _)| key == "passfile")
            .map(|(_, value)| PathBuf::from(value.as_ref()));
    }
    conn.split_whitespace()
        .find_map(|pair| pair.strip_prefix("passfile="))
        .map(|value| PathBuf::from(value.trim_matches('\'')))
}

/// Whether a connection string carries a password itself (`user:pw@`, a
/// `password=` query parameter or keyword).
pub fn carries_password(conn: &str) -> bool {
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        return url::Url::parse(conn).is_ok_and(|url| {
            url.password().is_some() || url.query_pairs().any(|(key, _)| key == "password")
        });
    }
    conn.split_whitespace()
        .any(|pair| pair.starts_with("password="))
}

/// Sets `config`'s password from the password file when the connection
/// string carries none and a file applies, as libpq would.
pub(crate) fn fill_password(config: &mut Config, conn: &str) -> Result<()> {
    if config.get_password().is_some() {
        return Ok(());
    }
    let (path, explicit) = match named(conn) {
        Some(path) => (path, true),
        None => match std::env::var_os("PGPASSFILE") {
            Some(path) => (PathBuf::from(path), true),
            None => match std::env::var_os("HOME") {
                Some(home) => (Path::new(&home).join(".pgpass"), false),
                None => return Ok(()),
            },
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                what: "cannot read the password file",
                path,
                source,
            });
        }
    };
    // libpq ignores a password file others can read; godwit refuses it, so
    // the mistake is named instead of surfacing as a failed login.
    crate::keys::refuse_if_shared(&path, "password file")?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        // libpq matches a socket directory as `localhost`.
        Some(Host::Unix(_)) | None => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_owned();
    let database = config.get_dbname().unwrap_or(&user).to_owned();
    if let Some(password) = lookup(&text, [&host, &port, &database, &user]) {
        config.password(password);
    }
    Ok(())
}

/// The password of the first line whose four fields match, as libpq reads them.
fn lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split_fields(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, value)| field == "*" || field == value);
            matches.then(|| fields[4..].join(":"))
        })
}

fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(escaped) = chars.next()
                    && let Some(field) = fields.last_mut()
                {
                    field.push(escaped);
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_as_libpq_matches_them() {
        let text = "# comment\n\
                    db.internal:5432:shop:reader:first\n\
                    *:*:*:migrator:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            lookup(text, ["db.internal", "5432", "shop", "reader"]).as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(text, ["10.0.0.1", "6543", "other", "migrator"]).as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            lookup(text, ["db.internal", "5433", "shop", "reader"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup("a:b:c\n", ["a", "b", "c", "d"]), None);
    }

    #[test]
    fn passwords_in_connection_strings_are_found_in_every_form() {
        for carrying in [
            "postgres://u:secret@h/db",
            "postgresql://u@h/db?password=secret",
            "host=h user=u password=secret",
        ] {
            assert!(carries_password(carrying), "{carrying}");
        }
        for clean in ["postgres://u@h/db?passfile=/p", "host=h user=u passfile=/p"] {
            assert!(!carries_password(clean), "{clean}");
        }
    }

    #[test]
    fn a_passfile_is_named_in_either_form() {
        assert_eq!(
            named("postgres://u@h:5432/db?passfile=%2Fsecrets%2Fpgpass&sslmode=require"),
            Some(PathBuf::from("/secrets/pgpass"))
        );
        assert_eq!(
            named("host=h user=u passfile=/secrets/pgpass"),
            Some(PathBuf::from("/secrets/pgpass"))
        );
        assert_eq!(named("postgres://u:p@h/db"), None);
    }

    #[test]
    fn a_password_file_others_can_read_is_refused_by_name() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:u:secret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let conn = format!("host=h user=u dbname=d passfile={}", path.display());
        let mut config: Config = "host=h user=u dbname=d".parse().expect("config");
        let err = fill_password(&mut config, &conn).expect_err("shared file accepted");
        assert!(err.to_string().contains("chmod 0600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        fill_password(&mut config, &conn).expect("private file");
        assert_eq!(config.get_password(), Some(&b"secret"[..]));
    }
}
