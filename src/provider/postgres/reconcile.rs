//! The statement sequence that converges or removes one tenant over an admin connection
//! (reference/postgres.md §0 and §5): read with bind parameters, change only what differs,
//! treat "already exists" as a lost race and re-read.
//!
//! Touches only the tenant's own role and database (plus the admin's membership in the roles
//! it must act as). Must not send a plaintext password: passwords leave as SCRAM-SHA-256
//! verifiers computed here, in statements that are never logged or quoted in errors.

use std::collections::HashMap;

use rand::RngCore;

use crate::provider::ProviderError;
use crate::value::Sensitive;

use super::conn::{Admin, Pools, StoredPassword, column};
use super::error;
use super::observed::{DatabaseState, RoleState};
use super::spec::{Server, Tenant};
use super::{sql, verifier};

/// The role's attributes, `None` when it does not exist.
pub async fn read_role(admin: &Admin, role: &str) -> Result<Option<RoleState>, ProviderError> {
    let row = admin
        .query_opt(sql::READ_ROLE, role)
        .await
        .map_err(|e| error::statement(&format!("read role `{role}`"), &e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(RoleState {
        login: column(&row, 0, "rolcanlogin")?,
        superuser: column(&row, 1, "rolsuper")?,
        createdb: column(&row, 2, "rolcreatedb")?,
        createrole: column(&row, 3, "rolcreaterole")?,
        replication: column(&row, 4, "rolreplication")?,
        bypassrls: column(&row, 5, "rolbypassrls")?,
        inherit: column(&row, 6, "rolinherit")?,
        connection_limit: column(&row, 7, "rolconnlimit")?,
    }))
}

/// The role's stored password verifier, when the admin may read it (superuser).
pub async fn read_password(admin: &Admin, role: &str) -> Result<StoredPassword, ProviderError> {
    if !admin.info.superuser {
        return Ok(StoredPassword::Unreadable);
    }
    let row = admin
        .query_opt(sql::READ_VERIFIER, role)
        .await
        .map_err(|e| {
            error::statement(&format!("read the password verifier of role `{role}`"), &e)
        })?;
    let verifier = match row {
        Some(row) => column::<Option<String>>(&row, 0, "rolpassword")?,
        None => None,
    };
    Ok(StoredPassword::Verifier(verifier.map(Sensitive::new)))
}

/// A server's roles and databases, read in one round trip (two pipelined queries) and shared by
/// every resource on the server during one refresh. Verifiers only with a superuser admin.
pub struct Catalog {
    roles: HashMap<String, (RoleState, Option<Sensitive>)>,
    databases: HashMap<String, DatabaseState>,
    /// Whether `pg_authid` was readable (the admin is a superuser).
    verifiers: bool,
}

impl Catalog {
    pub fn role(&self, name: &str) -> Option<RoleState> {
        self.roles.get(name).map(|(r, _)| *r)
    }

    pub fn database(&self, name: &str) -> Option<DatabaseState> {
        self.databases.get(name).cloned()
    }

    /// What [`read_password`] would have answered for the role.
    pub fn password(&self, name: &str) -> StoredPassword {
        if !self.verifiers {
            return StoredPassword::Unreadable;
        }
        StoredPassword::Verifier(self.roles.get(name).and_then(|(_, v)| v.clone()))
    }
}

/// Read a server's [`Catalog`].
pub async fn read_catalog(admin: &Admin) -> Result<Catalog, ProviderError> {
    let verifiers = admin.info.superuser;
    let roles_sql = if verifiers {
        sql::CATALOG_ROLES_WITH_VERIFIERS
    } else {
        sql::CATALOG_ROLES
    };
    let (roles, databases) =
        tokio::try_join!(admin.query(roles_sql), admin.query(sql::CATALOG_DATABASES))
            .map_err(|e| error::statement("read the server's roles and databases", &e))?;
    let mut catalog = Catalog {
        roles: HashMap::with_capacity(roles.len()),
        databases: HashMap::with_capacity(databases.len()),
        verifiers,
    };
    for row in &roles {
        let state = RoleState {
            login: column(row, 1, "rolcanlogin")?,
            superuser: column(row, 2, "rolsuper")?,
            createdb: column(row, 3, "rolcreatedb")?,
            createrole: column(row, 4, "rolcreaterole")?,
            replication: column(row, 5, "rolreplication")?,
            bypassrls: column(row, 6, "rolbypassrls")?,
            inherit: column(row, 7, "rolinherit")?,
            connection_limit: column(row, 8, "rolconnlimit")?,
        };
        let verifier = if verifiers {
            column::<Option<String>>(row, 9, "rolpassword")?.map(Sensitive::new)
        } else {
            None
        };
        catalog
            .roles
            .insert(column(row, 0, "rolname")?, (state, verifier));
    }
    for row in &databases {
        catalog.databases.insert(
            column(row, 0, "datname")?,
            DatabaseState {
                owner: column(row, 1, "owner")?,
                connection_limit: column(row, 2, "datconnlimit")?,
                public_connect: column(row, 3, "CONNECT")?,
                public_temp: column(row, 4, "TEMPORARY")?,
            },
        );
    }
    Ok(catalog)
}

/// The database's owner, limit and PUBLIC access, `None` when it does not exist.
pub async fn read_database(
    admin: &Admin,
    database: &str,
) -> Result<Option<DatabaseState>, ProviderError> {
    let row = admin
        .query_opt(sql::READ_DATABASE, database)
        .await
        .map_err(|e| error::statement(&format!("read database `{database}`"), &e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(DatabaseState {
        owner: column(&row, 0, "owner")?,
        connection_limit: column(&row, 1, "datconnlimit")?,
        public_connect: column(&row, 2, "CONNECT")?,
        public_temp: column(&row, 3, "TEMPORARY")?,
    }))
}

/// The database's OID, `None` when it does not exist.
pub async fn database_oid(admin: &Admin, database: &str) -> Result<Option<i64>, ProviderError> {
    let row = admin
        .query_opt(sql::DATABASE_OID, database)
        .await
        .map_err(|e| error::statement(&format!("read the OID of database `{database}`"), &e))?;
    row.map(|r| column(&r, 0, "oid")).transpose()
}

/// Make a non-superuser admin able to act as `role` (needed to create a database owned by it,
/// to take a database away from it, to drop what it owns). Kept afterwards: rotation, drift
/// repair and deletion need it again.
pub async fn ensure_member(admin: &Admin, role: &str) -> Result<(), ProviderError> {
    if admin.info.superuser || role == admin.info.user {
        return Ok(());
    }
    let query = if admin.info.version >= sql::PG16 {
        sql::IS_MEMBER_16
    } else {
        sql::IS_MEMBER
    };
    let action = format!("check whether the admin can act as role `{role}`");
    let row = admin
        .query_opt(query, role)
        .await
        .map_err(|e| error::statement(&action, &e))?;
    let member = match row {
        Some(row) => column::<Option<bool>>(&row, 0, "pg_has_role")?.unwrap_or(false),
        None => false,
    };
    if !member {
        run(
            admin,
            &sql::grant_to_admin(role, admin.info.version),
            &format!(
                "grant role `{role}` to the admin `{}` (a non-superuser admin must be able to act as it)",
                admin.info.user
            ),
        )
        .await?;
    }
    Ok(())
}

/// What [`converge`] leaves behind.
pub struct Converged {
    /// The verifier the role is known to hold afterwards, when the admin can know it.
    pub verifier: Option<Sensitive>,
    /// The database's OID.
    pub oid: Option<i64>,
}

/// Where [`converge`] starts from.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// The password was generated for this apply (first create or rotation), so it is set
    /// without first trying it.
    pub fresh: bool,
    /// tend never sent anything of this tenant to the server (no earlier attempt): the role
    /// and the database are created without being read first. One that exists all the same
    /// (made since the plan looked) answers "already exists" and is read and converged then.
    pub first: bool,
}

/// Converge the tenant: role, membership, database, isolation, password.
///
/// `made` is the verifier of `password` when it was built ahead of need.
///
/// Round trips for a tenant that does not exist yet: CREATE ROLE, CREATE DATABASE, then the
/// REVOKE and the OID read together (plus, unless [`Start::first`], the role and the database
/// read together before). A database this call created is not read back: its owner and limit
/// are those it was created with, and the REVOKE is idempotent.
pub async fn converge(
    pools: &Pools,
    admin: &Admin,
    server: &Server,
    tenant: &Tenant,
    password: &Sensitive,
    made: Option<Sensitive>,
    start: Start,
) -> Result<Converged, ProviderError> {
    let Start { fresh, first } = start;
    let role = tenant.owner.as_str();
    let database = tenant.database.as_str();
    let mut made = made;
    let mut verifier = || made.take().unwrap_or_else(|| new_verifier(password));
    // The verifier the role is known to hold afterwards, when the admin can know it.
    let mut in_place = None;

    let (found_role, found_db) = if first {
        (None, None)
    } else {
        tokio::try_join!(read_role(admin, role), read_database(admin, database))?
    };

    // 1. The role: create with every attribute and the password, or fix its attributes.
    let mut password_set = false;
    let existing = match found_role {
        Some(found) => Some(found),
        None => {
            let v = verifier();
            let created = admin
                .execute_sensitive(&sql::create_role(role, tenant.connection_limit, v.expose()))
                .await;
            match created {
                Ok(()) => {
                    tracing::info!(role, "created role");
                    password_set = true;
                    in_place = Some(v);
                    None
                }
                Err(e) if error::already_exists(&e) => {
                    tracing::debug!(role, "role appeared concurrently; converging it");
                    Some(read_role(admin, role).await?.ok_or_else(|| {
                        ProviderError::conflict(format!(
                            "role `{role}` was reported as existing but cannot be read"
                        ))
                    })?)
                }
                Err(e) => return Err(error::statement(&format!("create role `{role}`"), &e)),
            }
        }
    };
    if let Some(found) = existing
        && found != RoleState::desired(tenant.connection_limit)
    {
        run(
            admin,
            &sql::alter_role_attributes(role, tenant.connection_limit),
            &format!("set the attributes of role `{role}`"),
        )
        .await?;
        tracing::info!(role, "repaired role attributes");
    }

    // 2. A non-superuser admin must be able to act as the owner before CREATE DATABASE … OWNER.
    ensure_member(admin, role).await?;

    // 3. The database: create it owned by the role, or fix owner and limit.
    let db = match found_db {
        Some(db) => Some(db),
        None => {
            match admin
                .execute(&sql::create_database(
                    database,
                    role,
                    tenant.connection_limit,
                ))
                .await
            {
                Ok(()) => {
                    tracing::info!(database, owner = role, "created database");
                    None
                }
                Err(e) if error::already_exists(&e) => {
                    tracing::debug!(database, "database appeared concurrently; converging it");
                    Some(read_database(admin, database).await?.ok_or_else(|| {
                        ProviderError::conflict(format!(
                            "database `{database}` was reported as existing but cannot be read"
                        ))
                    })?)
                }
                Err(e) => {
                    return Err(error::statement(
                        &format!("create database `{database}`"),
                        &e,
                    ));
                }
            }
        }
    };
    if let Some(db) = &db {
        if db.owner != role {
            // ALTER DATABASE … OWNER TO needs the rights of the current owner as well.
            ensure_member(admin, &db.owner).await?;
            run(
                admin,
                &sql::alter_database_owner(database, role),
                &format!(
                    "give database `{database}` back to `{role}` (owned by `{}`)",
                    db.owner
                ),
            )
            .await?;
            tracing::info!(database, owner = role, previous = %db.owner, "repaired database owner");
        }
        if db.connection_limit != tenant.connection_limit {
            run(
                admin,
                &sql::alter_database_connection_limit(database, tenant.connection_limit),
                &format!("set the connection limit of database `{database}`"),
            )
            .await?;
        }
    }

    // 4. Isolation: a new database lets PUBLIC (every role) CONNECT and create TEMP tables.
    //    Sent together with the OID read (the database is in place from here on).
    let revoke = tenant.isolate && db.as_ref().is_none_or(DatabaseState::public_has_access);
    let isolate = async {
        if revoke {
            run(
                admin,
                &sql::revoke_public(database),
                &format!("revoke PUBLIC's access to database `{database}`"),
            )
            .await?;
        }
        Ok(())
    };
    let ((), oid) = tokio::try_join!(isolate, database_oid(admin, database))?;

    // 5. The password of a role that already existed: set it when it was just generated, else
    //    only when the recorded one no longer works (a verifier is salted anew each time, so
    //    setting it every run would change the role on every run).
    if !password_set {
        let works = !fresh && {
            let stored = read_password(admin, role).await?;
            let current = match &stored {
                StoredPassword::Verifier(v) => v.clone(),
                StoredPassword::Unreadable => None,
            };
            let works = pools
                .password_works(stored, server, role, password, database)
                .await?;
            if works {
                in_place = current;
            }
            works
        };
        if !works {
            let v = verifier();
            admin
                .execute_sensitive(&sql::alter_role_password(role, v.expose()))
                .await
                .map_err(|e| error::statement(&format!("set the password of role `{role}`"), &e))?;
            tracing::info!(role, "set role password");
            in_place = Some(v);
        }
    }
    Ok(Converged {
        verifier: in_place,
        oid,
    })
}

/// A SCRAM-SHA-256 verifier of `password` with a fresh random salt (4,096 PBKDF2 rounds).
pub fn new_verifier(password: &Sensitive) -> Sensitive {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    verifier::scram_sha_256(password, &salt)
}

/// Drop the tenant's database (ending its sessions) and role; what is already gone is fine.
/// `known_oid`: the database tend created, adopted or imported; one with another OID was made
/// outside tend and is not dropped unless the tenant says `force_destroy`.
pub async fn teardown(
    admin: &Admin,
    tenant: &Tenant,
    known_oid: Option<i64>,
) -> Result<(), ProviderError> {
    let database = tenant.database.as_str();
    let role = tenant.owner.as_str();
    if let (Some(known), Some(found)) = (known_oid, database_oid(admin, database).await?)
        && known != found
        && !tenant.force_destroy
    {
        return Err(ProviderError::permanent(format!(
            "database `{database}` is not the one tend created or took over (OID {known} recorded, {found} found): it was dropped and made again outside tend and may hold data tend knows nothing of, so tend does not drop it. Drop it yourself, or set `force_destroy: true` on the resource (apply), then remove it"
        )));
    }
    if let Some(db) = read_database(admin, database).await? {
        // Only the owner (or a member of it) may drop a database.
        ensure_member(admin, &db.owner).await?;
        if admin.info.version < sql::PG13 {
            admin
                .client()
                .query(sql::TERMINATE_SESSIONS, &[&database])
                .await
                .map_err(|e| {
                    error::statement(&format!("end the sessions on database `{database}`"), &e)
                })?;
        }
        run(
            admin,
            &sql::drop_database(database, admin.info.version),
            &format!("drop database `{database}`"),
        )
        .await?;
        tracing::info!(database, "dropped database");
    }
    if read_role(admin, role).await?.is_some() {
        ensure_member(admin, role).await?;
        run(
            admin,
            &sql::reassign_owned(role),
            &format!("reassign what role `{role}` owns"),
        )
        .await?;
        run(
            admin,
            &sql::drop_owned(role),
            &format!("drop what role `{role}` owns"),
        )
        .await?;
        run(admin, &sql::drop_role(role), &format!("drop role `{role}`")).await?;
        tracing::info!(role, "dropped role");
    }
    Ok(())
}

/// Run a statement that carries no secret; errors name `action`, never the statement.
async fn run(admin: &Admin, statement: &str, action: &str) -> Result<(), ProviderError> {
    admin
        .execute(statement)
        .await
        .map_err(|e| error::statement(action, &e))
}
