//! A wrapper for values that must never reach a log line: account keys, client secrets, connection strings,
//! tokens. `Debug` and `Display` print a fixed placeholder; the value is read only where it is used.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The only way to read the value. Grep for `expose` to audit every place a secret is used.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2".to_string());
        assert!(!format!("{s:?} {s} {:?}", Some(&s)).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
