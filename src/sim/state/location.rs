//! A location's bookkeeping: creating it, adding and finding assets, users and events, and its
//! data-set versions (bumped on every change, churned on request, each id derived from the
//! location's key).

use super::*;

impl Location {
    pub fn new(
        uid: String,
        name: String,
        stoken: String,
        exp_date: DateTime<Utc>,
        page_size: usize,
        rng: &mut SmallRng,
    ) -> Location {
        let mut loc = Location {
            uid,
            name,
            stoken,
            exp_date,
            page_size,
            assets: Vec::new(),
            asset_index: HashMap::new(),
            users: Vec::new(),
            active_user: HashMap::new(),
            assignments: BTreeMap::new(),
            events: Vec::new(),
            event_index: HashMap::new(),
            config: ClientConfig {
                types: NOTIFICATION_TYPES.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            seq: 0,
            versions: Default::default(),
            queue: None,
            key: rng.gen(),
            plain_notifications: 0,
        };
        for ds in [DataSet::Assets, DataSet::Assignments, DataSet::Users] {
            loc.bump(ds, 0);
        }
        loc
    }

    pub fn add_asset(&mut self, a: Asset) -> Result<(), String> {
        let key = (a.adam_id.clone(), a.pricing_param.clone());
        if self.asset_index.contains_key(&key) {
            return Err(format!("duplicate asset {}/{}", key.0, key.1));
        }
        self.asset_index.insert(key, self.assets.len());
        self.assets.push(a);
        Ok(())
    }

    pub fn asset(&self, adam_id: &str, pricing_param: &str) -> Option<&Asset> {
        self.asset_index
            .get(&(adam_id.to_string(), pricing_param.to_string()))
            .map(|&i| &self.assets[i])
    }

    pub(super) fn asset_mut(&mut self, adam_id: &str, pricing_param: &str) -> Option<&mut Asset> {
        match self
            .asset_index
            .get(&(adam_id.to_string(), pricing_param.to_string()))
        {
            Some(&i) => self.assets.get_mut(i),
            None => None,
        }
    }

    pub fn add_user(&mut self, u: User) -> Result<(), String> {
        if self.active_user.contains_key(&u.client_user_id) {
            return Err(format!("duplicate user {}", u.client_user_id));
        }
        if u.status != UserStatus::Retired {
            self.active_user
                .insert(u.client_user_id.clone(), self.users.len());
        }
        self.users.push(u);
        Ok(())
    }

    pub fn active_user(&self, id: &str) -> Option<&User> {
        self.active_user.get(id).map(|&i| &self.users[i])
    }

    pub fn version_id(&self, ds: DataSet) -> &str {
        &self.versions[ds as usize].current
    }

    /// A key for something this location issues (see [`keyed`]).
    pub fn derive(&self, parts: &[&str]) -> u64 {
        keyed(self.key, parts)
    }

    /// A new versionId for `ds`, mapped to modification counter `seq` (one bump per data set
    /// and counter, so the pair names it).
    pub(super) fn bump(&mut self, ds: DataSet, seq: u64) {
        let id = keyed_uuid(self.derive(&["version", &(ds as u8).to_string(), &seq.to_string()]));
        let v = &mut self.versions[ds as usize];
        v.history.insert(id.clone(), seq);
        v.current = id;
    }

    /// The `versionChurn` fault: another writer touched unrelated data.
    pub fn churn(&mut self, ds: DataSet) {
        self.seq += 1;
        let seq = self.seq;
        self.bump(ds, seq);
    }

    pub fn add_event(&mut self, ev: Event) {
        self.event_index.insert(ev.id.clone(), self.events.len());
        self.events.push(ev);
    }

    pub fn event(&self, id: &str) -> Option<&Event> {
        self.event_index.get(id).map(|&i| &self.events[i])
    }
}
