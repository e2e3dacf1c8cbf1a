//! What the paged list queries share: the tenant-scoped `WHERE` clause built one optional filter
//! at a time with numbered parameters, the literal search pattern, and one page with the total.

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, FromQueryResult, Value};
use uuid::Uuid;

use super::stmt;
use crate::paging::{PageNumber, PageSize};

/// One page of a list's rows, and how many rows match in all.
pub type Page<Row> = (Vec<Row>, i64);

/// The conditions of a list query: `tenant_id = $1`, then each filter present, `AND`-ed.
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<Value>,
}

impl Conditions {
    /// Rows of `tenant` only.
    pub fn of_tenant(tenant: Uuid) -> Self {
        Self { clauses: vec!["tenant_id = $1".to_owned()], values: vec![tenant.into()] }
    }

    /// Adds a condition that takes no parameter.
    pub fn always(&mut self, clause: &str) {
        self.clauses.push(clause.to_owned());
    }

    /// Adds `clause`, whose `?` stands for `value`, when there is a value.
    pub fn add<T: Into<Value>>(&mut self, clause: &str, value: Option<T>) {
        if let Some(value) = value {
            self.values.push(value.into());
            self.clauses.push(clause.replace('?', &format!("${}", self.values.len())));
        }
    }

    /// Adds that one of `columns` contains the search text (`ILIKE`, its LIKE wildcards escaped
    /// so it matches literally): each column on its own, so no match spans two of them.
    pub fn search(&mut self, columns: &[&str], search: Option<&str>) {
        let pattern = search.map(|search| {
            let escaped = search.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        });
        let any_column: Vec<String> = columns.iter().map(|column| format!("{column} ILIKE ?")).collect();
        self.add(&format!("({})", any_column.join(" OR ")), pattern);
    }

    /// One page of the rows of `table` that match, in `order`, and how many match in all: one
    /// statement, so one round trip and one snapshot (the total always counts the rows the page
    /// is cut from). The count's row is joined to the page's, so a page past the end still
    /// carries the total (one row whose page columns are null).
    pub async fn page<E: EntityTrait>(
        self,
        db: &impl ConnectionTrait,
        table: &str,
        order: &str,
        page: PageNumber,
        limit: PageSize,
    ) -> Result<Page<E::Model>, DbErr> {
        let predicate = self.clauses.join(" AND ");
        let offset = page.offset(limit);
        let sql = format!(
            "SELECT counted.matching_total, page.* \
             FROM (SELECT count(*) AS matching_total FROM {table} WHERE {predicate}) counted \
             LEFT JOIN LATERAL (SELECT * FROM {table} WHERE {predicate} ORDER BY {order} \
                                LIMIT {limit} OFFSET {offset}) page ON true \
             ORDER BY {order}"
        );
        let rows = db.query_all_raw(stmt(&sql, self.values)).await?;
        let total = match rows.first() {
            Some(row) => row.try_get("", "matching_total")?,
            None => 0,
        };
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<Uuid>>("", "id")?.is_some() {
                items.push(E::Model::from_query_result(row, "")?);
            }
        }
        Ok((items, total))
    }
}
