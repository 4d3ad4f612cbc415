-- tally: older code compatible
--
-- 0005: counters queryable by base name and labels, for usage queries (docs/design.md, "Usage
-- queries").
--
-- A labelled counter is stored under its canonical name, `api_calls{region="eu",tenant="acme"}`
-- (src/counters/counter-name.ts). Billing asks for "api_calls per tenant", so the store keeps
-- each counter's base name and labels beside its name, indexed. A plain name has base and
-- labels NULL: prefix queries find those by name.
--
-- The row is written by a trigger when a counter is first inserted into tally.counters, so no
-- flush statement changes, a flush pays nothing for counters the store already has, and the
-- flushes of older code (a rolling deploy) record labels too. The trigger fires once per
-- statement on the rows actually inserted (not those the upsert updated).
CREATE TABLE tally.counter_labels (
  name text PRIMARY KEY,
  base text,
  labels jsonb,
  CHECK ((base IS NULL) = (labels IS NULL))
);

-- Listing a base's counters in name order, and plain names by prefix (base IS NULL): byte
-- order (COLLATE "C"), the order the API pages in.
CREATE INDEX counter_labels_base_name ON tally.counter_labels (base, (name COLLATE "C"));
-- Filters on label values (`labels @> '{"tenant":"acme"}'`).
CREATE INDEX counter_labels_labels ON tally.counter_labels USING gin (labels jsonb_path_ops);

-- The base and labels of a canonical labelled name; both NULL for any other name. The inverse
-- of canonicalName: `base{k1="v1",k2="v2"}`, keys in ascending order, each once, values JSON
-- strings whose only escapes are \" and \\ (names hold no control characters).
-- test/counter-labels.test.ts checks it against parseCounterName on random names.
--
-- Written for speed: it runs once per new counter, inside the flush that inserts it. The shape is
-- checked by a regular expression without capturing groups inside repetitions (PostgreSQL's
-- regex engine is ten times slower with them); the keys are checked in order, and the pairs
-- become a JSON object by one replacement. The values' escapes are JSON.stringify's own (the
-- shape allows no other), so the JSON object holds the values canonicalName was given.
CREATE FUNCTION tally.parse_counter_name(name text, OUT base text, OUT labels jsonb)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
-- Its patterns are written for standard strings, whatever the session says.
SET standard_conforming_strings = on
AS $$
DECLARE
  head text;
  body text;
  key text;
  previous text;
BEGIN
  IF right(name, 1) <> '}' OR strpos(name, '{') < 2 THEN
    RETURN;
  END IF;
  head := split_part(name, '{', 1);
  IF strpos(head, '}') > 0 THEN
    RETURN; -- a labelled name's base has no braces
  END IF;
  body := substr(name, length(head) + 2, length(name) - length(head) - 2);
  -- No control characters (names have none; one written by hand would not be JSON): plain.
  IF body !~ '^[A-Za-z_][A-Za-z0-9_]*="(?:[^"\\[:cntrl:]]|\\["\\])*"(?:,[A-Za-z_][A-Za-z0-9_]*="(?:[^"\\[:cntrl:]]|\\["\\])*")*$' THEN
    RETURN;
  END IF;
  -- The keys in the order written (the values removed): canonical means ascending, each once.
  FOREACH key IN ARRAY string_to_array(regexp_replace(body, '="(?:[^"\\]|\\["\\])*"', '', 'g'), ',') LOOP
    IF previous IS NOT NULL AND key COLLATE "C" <= previous COLLATE "C" THEN
      RETURN;
    END IF;
    previous := key;
  END LOOP;
  base := head;
  labels := ('{' || regexp_replace(body, '([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\["\\])*")', '"\1":\2', 'g') || '}')::jsonb;
END
$$;

CREATE FUNCTION tally.record_counter_labels() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tally.counter_labels (name, base, labels)
  SELECT inserted.name, parsed.base, parsed.labels
  FROM inserted_counters AS inserted, tally.parse_counter_name(inserted.name) AS parsed
  ON CONFLICT DO NOTHING;
  RETURN NULL;
END
$$;

-- Created before the back-fill, in the same transaction: its lock holds flushes back until the
-- migration commits, so no counter is inserted between the back-fill and the trigger.
CREATE TRIGGER counters_record_labels
  AFTER INSERT ON tally.counters
  REFERENCING NEW TABLE AS inserted_counters
  FOR EACH STATEMENT EXECUTE FUNCTION tally.record_counter_labels();

INSERT INTO tally.counter_labels (name, base, labels)
SELECT counters.name, parsed.base, parsed.labels
FROM tally.counters, tally.parse_counter_name(counters.name) AS parsed
ON CONFLICT DO NOTHING;
