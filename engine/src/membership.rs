//! The replicated member table: who is in the cluster, their peer and client URLs, who is
//! a learner, and which IDs were removed (a removed ID never comes back). Changed only by
//! applied raft entries, so every member holds the same table at the same index.

use std::collections::{BTreeMap, BTreeSet};

use rivet_api::etcdserverpb;
use rivet_api::rivetpb::{Member, MemberAttributes, Membership};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberTable {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

impl MemberTable {
    pub fn from_members(members: Vec<Member>) -> MemberTable {
        MemberTable {
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            removed: BTreeSet::new(),
        }
    }

    pub fn from_proto(membership: &Membership) -> MemberTable {
        MemberTable {
            members: membership
                .members
                .iter()
                .map(|m| (m.id, m.clone()))
                .collect(),
            removed: membership.removed.iter().copied().collect(),
        }
    }

    pub fn to_proto(&self) -> Membership {
        Membership {
            members: self.members.values().cloned().collect(),
            removed: self.removed.iter().copied().collect(),
        }
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn learner_count(&self) -> usize {
        self.members.values().filter(|m| m.is_learner).count()
    }

    /// Whether any member already uses one of these peer URLs.
    pub fn peer_url_in_use(&self, urls: &[String], except: Option<u64>) -> bool {
        self.members
            .values()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    pub fn add(&mut self, member: Member) {
        self.members.insert(member.id, member);
    }

    pub fn remove(&mut self, id: u64) {
        self.members.remove(&id);
        self.removed.insert(id);
    }

    pub fn promote(&mut self, id: u64) {
        if let Some(member) = self.members.get_mut(&id) {
            member.is_learner = false;
        }
    }

    pub fn update_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) {
        if let Some(member) = self.members.get_mut(&id) {
            member.peer_urls = peer_urls;
        }
    }

    pub fn set_attributes(&mut self, attributes: &MemberAttributes) {
        if let Some(member) = self.members.get_mut(&attributes.id) {
            member.name = attributes.name.clone();
            member.client_urls = attributes.client_urls.clone();
        }
    }

    /// The members in the form of etcd's Cluster API.
    pub fn to_api(&self) -> Vec<etcdserverpb::Member> {
        self.members.values().map(to_api_member).collect()
    }
}

pub fn to_api_member(m: &Member) -> etcdserverpb::Member {
    etcdserverpb::Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// Parses etcd's `--initial-cluster` (`name=url,name=url2,other=url3`): a name may appear
/// several times, once per peer URL.
pub fn parse_initial_cluster(value: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(format!(
                "invalid --initial-cluster entry {part:?}: expected name=url"
            ));
        };
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let parsed = parse_initial_cluster("a=http://1:2380,b=http://2:2380,a=http://3:2380")
            .expect("parse");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].1, vec!["http://1:2380", "http://3:2380"]);
        assert!(parse_initial_cluster("nonsense").is_err());
    }

    #[test]
    fn removed_ids_are_remembered() {
        let mut table = MemberTable::from_members(vec![Member {
            id: 7,
            ..Default::default()
        }]);
        table.remove(7);
        assert!(!table.contains(7));
        assert!(table.is_removed(7));
        let round_trip = MemberTable::from_proto(&table.to_proto());
        assert_eq!(round_trip, table);
    }
}
