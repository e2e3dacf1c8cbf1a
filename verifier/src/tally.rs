//! [`Tally`]: the named checks of a run, passed and failed, printed as they are recorded.

/// Tally of named checks.
#[derive(Default)]
pub struct Tally {
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    /// Records the check `name`: passed when `failures` is empty; prints it either way.
    pub fn record(&mut self, name: &str, failures: &[String]) {
        if failures.is_empty() {
            self.passed += 1;
            println!("  ok   {name}");
        } else {
            println!("  FAIL {name}");
            for failure in failures.iter().take(10) {
                println!("       {}", failure.replace('\n', "\n       "));
            }
            if failures.len() > 10 {
                println!("       … and {} more", failures.len() - 10);
            }
            self.failed.push(name.to_owned());
        }
    }

    /// Whether every check recorded so far passed.
    pub fn all_passed(&self) -> bool {
        self.failed.is_empty()
    }
}

/// The run's last line, `N passed, M failed`, which scripts read.
impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed.len())
    }
}
