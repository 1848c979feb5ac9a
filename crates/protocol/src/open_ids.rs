//! The ids of a stream's open parts (text messages of a run), in the order they
//! opened: what a format's encoder closes when the run ends. A set beside the
//! order, so a run with many messages costs one lookup per delta, not a scan.
//!
//! At most [`MOST_OPEN`] are open at once: a publisher that opens message after
//! message without ending any would otherwise grow every watching stream's
//! set for the whole run. Opening one more closes the oldest first.

use std::collections::{HashSet, VecDeque};

/// Parts a stream keeps open at once; agents keep one or two.
pub(crate) const MOST_OPEN: usize = 1024;

/// Open ids, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenIds {
    order: VecDeque<String>,
    open: HashSet<String>,
}

/// What opening an id did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// It was open already.
    Already,
    /// It opened; `closed` is the oldest id, closed to make room.
    New { closed: Option<String> },
}

impl OpenIds {
    /// Opens `id`, closing the oldest open id when [`MOST_OPEN`] are open.
    pub(crate) fn open(&mut self, id: &str) -> Opened {
        if self.open.contains(id) {
            return Opened::Already;
        }
        let closed = if self.order.len() >= MOST_OPEN { self.order.pop_front() } else { None };
        if let Some(oldest) = &closed {
            self.open.remove(oldest);
        }
        self.open.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        Opened::New { closed }
    }

    /// Closes every id, oldest first.
    pub(crate) fn close_all(&mut self) -> impl Iterator<Item = String> + '_ {
        self.open.clear();
        self.order.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_open_once_and_close_in_the_order_they_opened() {
        let mut ids = OpenIds::default();
        assert_eq!(ids.open("b"), Opened::New { closed: None });
        assert_eq!(ids.open("a"), Opened::New { closed: None });
        assert_eq!(ids.open("b"), Opened::Already);
        assert_eq!(ids.close_all().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(ids.open("b"), Opened::New { closed: None }, "closed ids may open again");
    }

    #[test]
    fn opening_past_the_bound_closes_the_oldest() {
        let mut ids = OpenIds::default();
        for n in 0..MOST_OPEN {
            assert_eq!(ids.open(&n.to_string()), Opened::New { closed: None });
        }
        assert_eq!(ids.open("one more"), Opened::New { closed: Some("0".to_owned()) });
        assert_eq!(ids.open("1"), Opened::Already, "the others stay open");
        assert_eq!(ids.open("0"), Opened::New { closed: Some("1".to_owned()) }, "the closed id opens anew");
        assert_eq!((ids.order.len(), ids.open.len()), (MOST_OPEN, MOST_OPEN));
    }
}
