//! Field paths for diagnostics (`spec.serving...rules[0].matches[1]`), built as a chain
//! of borrowed segments and rendered only when a diagnostic is written, so compiling a
//! valid object allocates no path strings.

use std::fmt;

#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Copy)]
pub(super) struct Field<'a> {
    parent: Option<&'a Field<'a>>,
    seg: Seg<'a>,
}

impl<'a> Field<'a> {
    pub(super) fn root(path: &'a str) -> Self {
        Field {
            parent: None,
            seg: Seg::Key(path),
        }
    }
    pub(super) fn key(&'a self, key: &'a str) -> Field<'a> {
        Field {
            parent: Some(self),
            seg: Seg::Key(key),
        }
    }
    pub(super) fn index(&'a self, i: usize) -> Field<'a> {
        Field {
            parent: Some(self),
            seg: Seg::Index(i),
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.parent {
            p.fmt(f)?;
        }
        match (self.seg, self.parent.is_some()) {
            (Seg::Key(k), true) => write!(f, ".{k}"),
            (Seg::Key(k), false) => f.write_str(k),
            (Seg::Index(i), _) => write!(f, "[{i}]"),
        }
    }
}
