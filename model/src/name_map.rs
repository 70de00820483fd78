//! Maps keyed by a short name — labels, selectors, a workload's named ports — as sorted vectors
//! (`litemap`) instead of B-trees. Such a map holds one to a few entries, and there is one per
//! object, workload and endpoint: a B-tree's first node is ≈ 540 bytes whatever it holds, so at
//! 1000 services these maps were a third of meshd's idle heap (issue 19). Iteration is in key
//! order, as with `BTreeMap`, and a key given twice keeps its last value, as serde gives it.

use litemap::LiteMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Deref, DerefMut};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameMap<V>(LiteMap<String, V>);

/// Kubernetes-style labels, and label selectors.
pub type Labels = NameMap<String>;

/// A workload's port numbers by service port name.
pub type NamedPorts = NameMap<u32>;

impl<V> NameMap<V> {
    pub const fn new() -> Self {
        NameMap(LiteMap::new())
    }

    /// Gives back the room a growing map left over.
    fn shrunk(self) -> Self {
        let mut entries = self.0.into_tuple_vec();
        entries.shrink_to_fit();
        NameMap(LiteMap::from_sorted_store_unchecked(entries))
    }
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap::new()
    }
}

impl<V> Deref for NameMap<V> {
    type Target = LiteMap<String, V>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<V> DerefMut for NameMap<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<V> std::ops::Index<&str> for NameMap<V> {
    type Output = V;
    /// As `BTreeMap`'s: panics when `key` is absent.
    fn index(&self, key: &str) -> &V {
        match self.0.get(key) {
            Some(v) => v,
            None => panic!("no entry named {key:?}"),
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for NameMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<V> FromIterator<(String, V)> for NameMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        NameMap(iter.into_iter().collect::<LiteMap<_, _>>()).shrunk()
    }
}

impl<V> Extend<(String, V)> for NameMap<V> {
    fn extend<I: IntoIterator<Item = (String, V)>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl<V, const N: usize> From<[(String, V); N]> for NameMap<V> {
    fn from(entries: [(String, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<V> From<std::collections::BTreeMap<String, V>> for NameMap<V> {
    fn from(map: std::collections::BTreeMap<String, V>) -> Self {
        map.into_iter().collect()
    }
}

impl<V> IntoIterator for NameMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_tuple_vec().into_iter()
    }
}

impl<'a, V> IntoIterator for &'a NameMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = <&'a LiteMap<String, V> as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&self.0).into_iter()
    }
}

impl<V: Serialize> Serialize for NameMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NameMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A map, whatever the format (litemap reads a sequence from binary formats); entries out
        // of order are sorted once, not inserted one by one.
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
            type Value = NameMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut access: M,
            ) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry::<String, V>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

#[cfg(feature = "schema")]
impl<V: schemars::JsonSchema> schemars::JsonSchema for NameMap<V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <std::collections::BTreeMap<String, V>>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <std::collections::BTreeMap<String, V>>::json_schema(generator)
    }

    fn inline_schema() -> bool {
        <std::collections::BTreeMap<String, V>>::inline_schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads and writes as a `BTreeMap` does: keys in order, the last of a repeated key wins,
    /// and the same JSON and YAML out.
    #[test]
    fn reads_and_writes_like_a_btree_map() {
        let json = r#"{"version": "v1", "app": "a", "tier": "x", "app": "b"}"#;
        let ours: Labels = serde_json::from_str(json).unwrap();
        let btree: std::collections::BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(
            ours.iter().collect::<Vec<_>>(),
            btree.iter().collect::<Vec<_>>()
        );
        assert_eq!(ours.get("app").map(String::as_str), Some("b"));
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        assert_eq!(format!("{ours:?}"), format!("{btree:?}"));
        let empty: Labels = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert!(serde_json::from_str::<Labels>("[]").is_err());
    }

    /// A map of many entries in reverse order reads in one sort (not one shift per entry), and
    /// keeps no spare room.
    #[test]
    fn a_large_unsorted_map_reads_sorted_and_tight() {
        let entries: Vec<String> = (0..20_000)
            .rev()
            .map(|i| format!("\"k{i:05}\": {i}"))
            .collect();
        let map: NamedPorts = serde_json::from_str(&format!("{{{}}}", entries.join(","))).unwrap();
        assert_eq!(map.len(), 20_000);
        assert_eq!(
            map.first().map(|(k, v)| (k.as_str(), *v)),
            Some(("k00000", 0))
        );
        assert_eq!(map.0.into_tuple_vec().capacity(), 20_000);
    }
}
