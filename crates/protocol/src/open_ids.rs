//! The ids of a stream's open parts (text messages of a run), in the order they
//! opened: what a format's encoder closes when the run ends. A set beside the
//! order, so a run with many messages costs one lookup per delta, not a scan.

use std::collections::HashSet;

/// Open ids, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenIds {
    order: Vec<String>,
    open: HashSet<String>,
}

impl OpenIds {
    /// Opens `id`; `true` if it was not open yet.
    pub(crate) fn open(&mut self, id: &str) -> bool {
        if self.open.contains(id) {
            return false;
        }
        self.open.insert(id.to_owned());
        self.order.push(id.to_owned());
        true
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
        assert!(ids.open("b") && ids.open("a") && !ids.open("b"));
        assert_eq!(ids.close_all().collect::<Vec<_>>(), ["b", "a"]);
        assert!(ids.open("b"), "closed ids may open again");
    }
}
