//! Lists `sql/<version>_<name>.sql` as the crate's `MIGRATIONS`, in version order, so that a
//! migration is added by adding its file. A file named otherwise fails the build, as do two
//! files of one version (two branches that each added the next migration) or a version missing.

use std::fmt::Write;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=sql");
    let mut files: Vec<String> = std::fs::read_dir("sql")
        .expect("the sql folder is readable")
        .map(|entry| entry.expect("the sql folder lists").file_name().into_string().expect("file names are UTF-8"))
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    let mut list = String::from("&[\n");
    for (expected, file) in (1..).zip(&files) {
        let stem = file.trim_end_matches(".sql");
        let (version, name) = stem.split_once('_').unwrap_or_else(|| panic!("{file}: not <version>_<name>.sql"));
        let version: i64 = version.parse().unwrap_or_else(|_| panic!("{file}: the version is not a number"));
        assert_eq!(
            version, expected,
            "{file}: migration {expected} expected here (two of one version, or one missing)"
        );
        writeln!(
            list,
            "    Migration {{ version: {version}, name: {name:?}, sql: include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/sql/{file}\")) }},"
        )
        .expect("a String takes any write");
    }
    list.push(']');
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    std::fs::write(out, list).expect("OUT_DIR is writable");
}
