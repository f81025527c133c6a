//! Files the issuer creates hold secrets (keys) or personal data (the SQLite database:
//! e-mail addresses, session IPs): directories are created 0700, files 0600, whatever
//! the umask says.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The SQLite database `db`: its directory created 0700, the file itself 0600 before
/// SQLite opens it (SQLite gives its `-wal` and `-shm` files the database's mode), and
/// files an older version left readable to others tightened. True when some had to be;
/// on failure, the path that failed.
pub fn private_sqlite_files(db: &Path) -> Result<bool, (PathBuf, io::Error)> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |e| (path, e)
    };
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(at(dir))?;
    }
    let mut tightened = make_private_file(db).map_err(at(db))?;
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let side = Path::new(&name);
        tightened |= tighten_if_present(side).map_err(at(side))?;
    }
    Ok(tightened)
}

/// Creates `dir` and its missing parents, mode 0700 (existing directories are left as
/// they are: they may be shared on purpose).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes `path` readable by its owner only, creating it empty if missing; true when its
/// mode had to be tightened.
pub fn make_private_file(path: &Path) -> io::Result<bool> {
    let mut options = fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    tighten(&file)
}

/// Tightens `path` to 0600 if it exists; true when it had to be.
pub fn tighten_if_present(path: &Path) -> io::Result<bool> {
    match fs::OpenOptions::new().read(true).open(path) {
        Ok(file) => tighten(&file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn tighten(file: &fs::File) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    file.set_permissions(fs::Permissions::from_mode(mode & 0o700))?;
    Ok(true)
}

#[cfg(not(unix))]
fn tighten(_: &fs::File) -> io::Result<bool> {
    Ok(false)
}
