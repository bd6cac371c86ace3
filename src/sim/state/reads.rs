//! The read side: query parameters ([`Params`]), pagination (9650 past the last page), and
//! Get Assets, Get Assignments and Get Users with their filters and `sinceVersionId`.

use super::*;

/// Parsed query string; the last occurrence of a key wins.
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.str(k) {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(_) => Err(ApiError::new(9602)),
        }
    }
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        self.str(k)
            .map(|s| s.parse::<i64>().map_err(|_| ApiError::new(9602)))
            .transpose()
    }
    fn one_of(&self, k: &str, allowed: &[&str]) -> Result<Option<&str>, ApiError> {
        match self.str(k) {
            Some(v) if !allowed.contains(&v) => Err(ApiError::new(9602)),
            other => Ok(other),
        }
    }
}

/// Cuts one page out of `items`. `totalPages` is at least 1 so page 0 of an empty result is
/// valid [I]; out-of-range pageIndex -> 9650 [C PAG].
pub(super) fn paginate<T>(
    items: Vec<T>,
    page_size: usize,
    page_index: Option<i64>,
) -> Result<(Vec<T>, Map<String, Value>), ApiError> {
    let total = items.len();
    paginate_iter(items.into_iter(), total, page_size, page_index)
}

/// [`paginate`] over an iterator of `total` items, so a page can be taken without collecting
/// the others first.
pub(super) fn paginate_iter<T>(
    items: impl Iterator<Item = T>,
    total: usize,
    page_size: usize,
    page_index: Option<i64>,
) -> Result<(Vec<T>, Map<String, Value>), ApiError> {
    let page_size = page_size.max(1);
    let total_pages = total.div_ceil(page_size).max(1);
    let idx = page_index.unwrap_or(0);
    if idx < 0 || idx as u64 >= total_pages as u64 {
        return Err(ApiError::new(9650));
    }
    let idx = idx as usize;
    let page: Vec<T> = items.skip(idx * page_size).take(page_size).collect();
    let mut m = Map::new();
    m.insert("currentPageIndex".into(), json!(idx));
    if idx + 1 < total_pages {
        m.insert("nextPageIndex".into(), json!(idx + 1));
    }
    m.insert("size".into(), json!(page.len()));
    m.insert("totalPages".into(), json!(total_pages));
    Ok((page, m))
}

impl Location {
    fn since(&self, ds: DataSet, q: &Params) -> Result<Option<u64>, ApiError> {
        match q.str("sinceVersionId") {
            None => Ok(None),
            Some(v) => self.versions[ds as usize]
                .history
                .get(v)
                .copied()
                .map(Some)
                .ok_or_else(|| ApiError::new(9721)),
        }
    }

    /// `GET assets` body (without token fields) [C ASSETS, MASSETS].
    pub fn get_assets(&self, q: &Params) -> Result<Map<String, Value>, ApiError> {
        let product_type = q.one_of("productType", &["App", "Book"])?;
        let pricing = q.one_of("pricingParam", &["STDQ", "PLUS"])?;
        let revocable = q.bool("revocable")?;
        let device = q.bool("deviceAssignable")?;
        let unlimited = q.bool("unlimited")?;
        let (max_av, min_av) = (q.int("maxAvailableCount")?, q.int("minAvailableCount")?);
        let (max_as, min_as) = (q.int("maxAssignedCount")?, q.int("minAssignedCount")?);
        let adam = q.str("adamId");
        let page_index = q.int("pageIndex")?;
        let items: Vec<&Asset> = self
            .assets
            .iter()
            .filter(|a| product_type.is_none_or(|v| a.product_type == v))
            .filter(|a| pricing.is_none_or(|v| a.pricing_param == v))
            .filter(|a| revocable.is_none_or(|v| a.revocable == v))
            .filter(|a| device.is_none_or(|v| a.device_assignable == v))
            .filter(|a| adam.is_none_or(|v| a.adam_id == v))
            .filter(|a| max_av.is_none_or(|v| a.available_count() <= v))
            .filter(|a| min_av.is_none_or(|v| a.available_count() >= v))
            .filter(|a| max_as.is_none_or(|v| a.assigned <= v))
            .filter(|a| min_as.is_none_or(|v| a.assigned >= v))
            .filter(|a| unlimited != Some(false) || a.total.is_some())
            .collect();
        let (page, mut m) = paginate(items, self.page_size, page_index)?;
        let mut assets = Vec::new();
        let mut unl = Vec::new();
        for a in page {
            if unlimited == Some(true) && a.total.is_none() {
                unl.push(a.to_json(true));
            } else {
                assets.push(a.to_json(false));
            }
        }
        m.insert("assets".into(), Value::Array(assets));
        if unlimited == Some(true) {
            m.insert("unlimitedAssets".into(), Value::Array(unl));
        }
        m.insert("versionId".into(), json!(self.version_id(DataSet::Assets)));
        Ok(m)
    }

    /// `GET assignments` body [C ASSIGN]. Removed assignments never appear (see module doc).
    /// The assignments matching a query's filters, paginated (filters combine with AND).
    #[allow(clippy::too_many_arguments)]
    fn filtered_assignments(
        &self,
        since: Option<u64>,
        adam: Option<&str>,
        pricing: Option<&str>,
        user: Option<&str>,
        serial: Option<&str>,
        exclude_inactive: bool,
        page_index: Option<i64>,
    ) -> Result<(Vec<&AssignKey>, Map<String, Value>), ApiError> {
        let items: Vec<&AssignKey> = self
            .assignments
            .iter()
            .filter(|(_, &m)| since.is_none_or(|s| m > s))
            .map(|(k, _)| k)
            .filter(|k| adam.is_none_or(|v| k.adam_id == v))
            .filter(|k| pricing.is_none_or(|v| k.pricing_param == v))
            // Filters combine with AND; an assignment has either a user or a serial number.
            .filter(|k| match &k.target {
                Target::User(u) => serial.is_none() && user.is_none_or(|v| u == v),
                Target::Serial(s) => user.is_none() && serial.is_none_or(|v| s == v),
            })
            .filter(|k| match &k.target {
                Target::User(u) if exclude_inactive => self.active_user(u).is_some(),
                _ => true,
            })
            .collect();
        paginate(items, self.page_size, page_index)
    }

    pub fn get_assignments(&self, q: &Params) -> Result<Map<String, Value>, ApiError> {
        let pricing = q.one_of("pricingParam", &["STDQ", "PLUS"])?;
        let adam = q.str("adamId");
        let user = q.str("clientUserId");
        let serial = q.str("serialNumber");
        let exclude_inactive = q.bool("excludeInactiveUsers")?.unwrap_or(false);
        let include_state = q.bool("includeUserState")?.unwrap_or(false);
        let page_index = q.int("pageIndex")?;
        let since = self.since(DataSet::Assignments, q)?;
        // A full sync's traversal (no filter) steps to its page instead of collecting every
        // assignment for every page: the same pages, without the per-page cost in the size of
        // the location that made a 1,000,000-assignment sync simulator-bound.
        let unfiltered = since.is_none()
            && adam.is_none()
            && pricing.is_none()
            && user.is_none()
            && serial.is_none()
            && !exclude_inactive;
        let (page, mut m) = if unfiltered {
            paginate_iter(
                self.assignments.keys(),
                self.assignments.len(),
                self.page_size,
                page_index,
            )?
        } else {
            self.filtered_assignments(
                since,
                adam,
                pricing,
                user,
                serial,
                exclude_inactive,
                page_index,
            )?
        };
        let list: Vec<Value> = page
            .into_iter()
            .map(|k| {
                let mut v = k.to_json();
                if let (true, Target::User(u), Some(obj)) =
                    (include_state, &k.target, v.as_object_mut())
                {
                    if let Some(user) = self.active_user(u) {
                        obj.insert("userStatus".into(), json!(user.status.name()));
                        if let Some(h) = &user.id_hash {
                            obj.insert("idHash".into(), json!(h));
                        }
                    }
                }
                v
            })
            .collect();
        m.insert("assignments".into(), Value::Array(list));
        m.insert(
            "versionId".into(),
            json!(self.version_id(DataSet::Assignments)),
        );
        Ok(m)
    }

    /// `GET users` body [C USERS].
    pub fn get_users(&self, q: &Params) -> Result<Map<String, Value>, ApiError> {
        let active_only = q.bool("activeOnly")?.unwrap_or(false);
        let retired_only = q.bool("retiredOnly")?.unwrap_or(false);
        let id = q.str("clientUserId");
        let page_index = q.int("pageIndex")?;
        let since = self.since(DataSet::Users, q)?;
        let items: Vec<&User> = self
            .users
            .iter()
            .filter(|u| since.is_none_or(|s| u.modified > s))
            .filter(|u| id.is_none_or(|v| u.client_user_id == v))
            .filter(|u| !active_only || u.status != UserStatus::Retired)
            .filter(|u| !retired_only || u.status == UserStatus::Retired)
            .collect();
        let (page, mut m) = paginate(items, self.page_size, page_index)?;
        m.insert(
            "users".into(),
            Value::Array(page.into_iter().map(User::to_json).collect()),
        );
        m.insert("versionId".into(), json!(self.version_id(DataSet::Users)));
        Ok(m)
    }
}
