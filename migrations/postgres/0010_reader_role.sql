-- A read-only role for dashboards (Grafana's PostgreSQL datasource): SELECT
-- on every table of this database, now and as later migrations add them.
-- It is created only where the migrating user may create roles (roles
-- belong to the cluster; several databases share one); elsewhere the
-- operator creates it and this migration only grants. Its password is set
-- by `modelwatch migrate` from MODELWATCH_READER_PASSWORD, or by the
-- operator (ALTER ROLE modelwatch_reader PASSWORD ...).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'modelwatch_reader') THEN
        IF EXISTS (SELECT 1 FROM pg_roles
                   WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            BEGIN
                CREATE ROLE modelwatch_reader LOGIN;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- Another database's migration created it at the same moment.
                NULL;
            END;
        ELSE
            RAISE NOTICE 'modelwatch_reader not created: % may not create roles', current_user;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'modelwatch_reader') THEN
        BEGIN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO modelwatch_reader', current_database());
            GRANT USAGE ON SCHEMA public TO modelwatch_reader;
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO modelwatch_reader;
            ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO modelwatch_reader;
        EXCEPTION WHEN insufficient_privilege THEN
            -- A user that does not own the database or schema cannot
            -- grant on them; the monitor must still start.
            RAISE NOTICE 'modelwatch_reader not granted: %', SQLERRM;
        END;
    END IF;
END
$$;
