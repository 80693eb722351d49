//! A difference that appears on the target between a cutover's baseline
//! verification and its freeze, for the frozen check to find.

/// A trigger on the target's `customers` that alters every row inserted
/// after the cutover's verification has pruned the changed-key log (which
/// arms it): a difference that appears between that verification and the
/// freeze.
pub(crate) const ARM_A_CORRUPTION: &str = "
    BEGIN;
    -- In the order the stream takes them, so the two never deadlock.
    LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE godwit.changed_keys IN SHARE ROW EXCLUSIVE MODE;
    CREATE TABLE public.armed (on_ boolean NOT NULL);
    INSERT INTO public.armed VALUES (false);
    GRANT ALL ON public.armed TO PUBLIC;
    CREATE FUNCTION public.arm() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN UPDATE public.armed SET on_ = true; RETURN NULL; END $$;
    CREATE TRIGGER arm AFTER DELETE ON godwit.changed_keys
        FOR EACH STATEMENT EXECUTE FUNCTION public.arm();
    CREATE FUNCTION public.alter_insert() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN
            IF (SELECT on_ FROM public.armed) THEN
                NEW.name := NEW.name || ' altered on the target';
            END IF;
            RETURN NEW;
        END $$;
    CREATE TRIGGER alter_inserts BEFORE INSERT ON customers
        FOR EACH ROW EXECUTE FUNCTION public.alter_insert();
    ALTER TABLE customers ENABLE ALWAYS TRIGGER alter_inserts;
    COMMIT;
";

/// The keys of the target's customers the armed trigger altered, lowest
/// first (a report lists the first keys that differ in key order: under
/// load the trigger may alter more rows than it lists).
pub(crate) async fn altered_keys(target: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(target
        .query(
            "SELECT id::text FROM customers WHERE name LIKE '% altered on the target' ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
