//! The write side: processing one queued event (associate, disassociate or revoke assets;
//! create, update or retire users) against the location's data, as Apple's worker would, and
//! the changes the control API (`/_sim/...`) makes: licence counts, a user accepting an
//! invitation, and the ground truth it reports.

use super::*;

impl Location {
    /// Processes event `event_id` (the worker calls this once, after processingDelay).
    pub fn process(&mut self, event_id: &str) -> Option<(EventType, Applied)> {
        let idx = *self.event_index.get(event_id)?;
        let kind = self.events[idx].kind;
        let req = self.events[idx].request.take()?;
        self.seq += 1;
        let seq = self.seq;
        let mut out = Applied::default();
        let mut completed = 0u64;
        match (kind, req) {
            (EventType::Associate, WriteRequest::Assets { assets, targets }) => {
                for (adam, pp) in &assets {
                    for t in &targets {
                        let key = AssignKey {
                            adam_id: adam.clone(),
                            pricing_param: pp.clone(),
                            target: t.clone(),
                        };
                        if let Target::User(u) = t {
                            if !self.active_user.contains_key(u) {
                                out.fail(9609, key.to_json());
                                continue;
                            }
                        }
                        if self.assignments.contains_key(&key) {
                            // Re-associating is a no-op success and uses no licence.
                            completed += 1;
                            out.ok.push(key.to_json());
                            continue;
                        }
                        match self.asset_mut(adam, pp) {
                            Some(a) if a.has_available() => {
                                a.assigned += 1;
                                completed += 1;
                                out.ok.push(key.to_json());
                                self.assignments.insert(key, seq);
                            }
                            // Unknown asset: the location owns no licence for it.
                            _ => out.fail(9709, key.to_json()),
                        }
                    }
                }
            }
            (EventType::Disassociate, WriteRequest::Assets { assets, targets }) => {
                for (adam, pp) in &assets {
                    for t in &targets {
                        let key = AssignKey {
                            adam_id: adam.clone(),
                            pricing_param: pp.clone(),
                            target: t.clone(),
                        };
                        if self.assignments.remove(&key).is_some() {
                            if let Some(a) = self.asset_mut(adam, pp) {
                                a.assigned -= 1;
                            }
                        } else if let Target::User(u) = t {
                            if !self.active_user.contains_key(u) {
                                out.fail(9609, key.to_json());
                                continue;
                            }
                        }
                        completed += 1;
                        out.ok.push(key.to_json());
                    }
                }
            }
            (EventType::Revoke, WriteRequest::Assets { assets, targets }) => {
                let only: BTreeSet<(String, String)> = assets.into_iter().collect();
                for t in &targets {
                    if let Target::User(u) = t {
                        if !self.active_user.contains_key(u) {
                            out.fail(9609, t.entity_json());
                            continue;
                        }
                    }
                    let keys: Vec<AssignKey> = self
                        .assignments
                        .keys()
                        .filter(|k| &k.target == t)
                        .filter(|k| {
                            only.is_empty()
                                || only.contains(&(k.adam_id.clone(), k.pricing_param.clone()))
                        })
                        .filter(|k| {
                            self.asset(&k.adam_id, &k.pricing_param)
                                .is_none_or(|a| a.revocable)
                        })
                        .cloned()
                        .collect();
                    for k in keys {
                        self.assignments.remove(&k);
                        if let Some(a) = self.asset_mut(&k.adam_id, &k.pricing_param) {
                            a.assigned -= 1;
                        }
                        out.ok.push(k.to_json());
                    }
                    completed += 1;
                }
            }
            (EventType::Create, WriteRequest::Users(users)) => {
                for u in users {
                    if self.active_user.contains_key(&u.client_user_id) {
                        out.fail(9716, req_user_json(&u));
                        continue;
                    }
                    // The entry's index names it: a clientUserId can be created again after
                    // retirement.
                    let code = self.derive(&["invite", &self.users.len().to_string()]);
                    let user = User {
                        client_user_id: u.client_user_id,
                        email: u.email,
                        managed_apple_id: u.managed_apple_id,
                        status: UserStatus::Registered,
                        invite_code: keyed_hex(code, 16),
                        id_hash: None,
                        modified: seq,
                    };
                    out.ok.push(user.to_json());
                    completed += 1;
                    self.active_user
                        .insert(user.client_user_id.clone(), self.users.len());
                    self.users.push(user);
                }
            }
            (EventType::Update, WriteRequest::Users(users)) => {
                for u in users {
                    let Some(&i) = self.active_user.get(&u.client_user_id) else {
                        out.fail(9609, req_user_json(&u));
                        continue;
                    };
                    let user = &mut self.users[i];
                    if u.email.is_some() {
                        user.email = u.email;
                    }
                    if u.managed_apple_id.is_some() {
                        user.managed_apple_id = u.managed_apple_id;
                    }
                    user.modified = seq;
                    out.ok.push(user.to_json());
                    completed += 1;
                }
            }
            (EventType::Retire, WriteRequest::Users(users)) => {
                for u in users {
                    let Some(i) = self.active_user.remove(&u.client_user_id) else {
                        out.fail(9609, req_user_json(&u));
                        continue;
                    };
                    let user = &mut self.users[i];
                    user.status = UserStatus::Retired;
                    user.modified = seq;
                    out.ok.push(user.to_json());
                    completed += 1;
                    // Retiring a user releases all of its licences [C MUSERS].
                    let t = Target::User(u.client_user_id.clone());
                    let keys: Vec<AssignKey> = self
                        .assignments
                        .keys()
                        .filter(|k| k.target == t)
                        .cloned()
                        .collect();
                    for k in keys {
                        self.assignments.remove(&k);
                        if let Some(a) = self.asset_mut(&k.adam_id, &k.pricing_param) {
                            a.assigned -= 1;
                        }
                    }
                }
            }
            _ => return None,
        }
        let touched: &[DataSet] = match kind {
            EventType::Associate | EventType::Disassociate | EventType::Revoke => {
                &[DataSet::Assets, DataSet::Assignments]
            }
            EventType::Create | EventType::Update => &[DataSet::Users],
            EventType::Retire => &[DataSet::Users, DataSet::Assignments, DataSet::Assets],
        };
        for &ds in touched {
            self.bump(ds, seq);
        }
        let ev = &mut self.events[idx];
        ev.num_completed = completed;
        ev.failures = out
            .failed
            .iter()
            .map(|(code, ents)| {
                crate::sim::errors::error_body(*code, Some(error_info(*code, ents)))
            })
            .collect();
        ev.status = if out.failed.is_empty() {
            EventStatus::Complete
        } else {
            EventStatus::Failed
        };
        Some((kind, out))
    }

    /// `POST /_sim/asset-count`: licences bought (+) or refunded / moved away (−).
    pub fn change_count(
        &mut self,
        adam_id: &str,
        pricing_param: &str,
        delta: i64,
    ) -> Result<Value, String> {
        let a = self
            .asset_mut(adam_id, pricing_param)
            .ok_or_else(|| format!("unknown asset {adam_id}/{pricing_param}"))?;
        let Some(total) = a.total else {
            return Err(format!("asset {adam_id} is unlimited"));
        };
        let new = total.saturating_add(delta);
        if new < a.assigned {
            return Err(format!(
                "total {new} would be below assignedCount {}",
                a.assigned
            ));
        }
        a.total = Some(new);
        let json = a.to_json(false);
        self.seq += 1;
        let seq = self.seq;
        self.bump(DataSet::Assets, seq);
        Ok(json)
    }

    /// `POST /_sim/associate-user`: the user accepted the invitation (Registered -> Associated).
    pub fn associate_user(&mut self, client_user_id: &str) -> Result<Value, String> {
        let &i = self
            .active_user
            .get(client_user_id)
            .ok_or_else(|| format!("no active user {client_user_id}"))?;
        if self.users[i].status == UserStatus::Associated {
            return Err(format!("user {client_user_id} is already Associated"));
        }
        self.seq += 1;
        let seq = self.seq;
        let hash = keyed_hex(self.derive(&["idHash", &i.to_string()]), 20);
        let u = &mut self.users[i];
        u.status = UserStatus::Associated;
        u.id_hash = Some(hash);
        u.modified = seq;
        let json = u.to_json();
        self.bump(DataSet::Users, seq);
        Ok(json)
    }

    /// `GET /_sim/truth/{uId}` body.
    pub fn truth(&self) -> Value {
        json!({
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
            "assets": self.assets.iter().map(|a| a.to_json(false)).collect::<Vec<_>>(),
            "assignments": self.assignments.keys().map(AssignKey::to_json).collect::<Vec<_>>(),
            "users": self.users.iter().map(User::to_json).collect::<Vec<_>>(),
        })
    }
}

fn req_user_json(u: &ReqUser) -> Value {
    let mut m = Map::new();
    m.insert("clientUserId".into(), json!(u.client_user_id));
    if let Some(e) = &u.email {
        m.insert("email".into(), json!(e));
    }
    Value::Object(m)
}
