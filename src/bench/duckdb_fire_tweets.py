# fire-tweets in DuckDB, for `sluice bench fire-tweets`: the same files, the same semantics
# (README, "fire-tweets: what counts"), written as one query. Reads its arguments as one JSON
# object in argv[1]; prints one JSON object: wall and CPU seconds of the query, the matching
# count and the cities.
#
# The default keywords (fire, "fire truck", "fire engine", #fire) reduce to: the word `fire`
# in the lowercased text (words are runs of letters, digits and `_`), or a hashtag entity
# `fire`, `firetruck` or `fireengine`. Only those are supported here.
import json
import resource
import sys
import time

import duckdb

args = json.loads(sys.argv[1])
con = duckdb.connect()
con.execute(f"SET threads = {int(args['threads'])}")
con.execute("SET enable_progress_bar = false")

hashtags = "STRUCT(hashtags STRUCT(text VARCHAR)[])"
status = (
    "text VARCHAR, full_text VARCHAR, truncated BOOLEAN, "
    f"extended_tweet STRUCT(full_text VARCHAR, entities {hashtags}), entities {hashtags}"
)
columns = {
    "created_at": "VARCHAR",
    "text": "VARCHAR",
    "full_text": "VARCHAR",
    "extended_tweet": f"STRUCT(full_text VARCHAR, entities {hashtags})",
    "entities": hashtags,
    "place": "STRUCT(country_code VARCHAR, name VARCHAR, full_name VARCHAR, place_type VARCHAR)",
    "retweeted_status": f"STRUCT({status})",
}
word = r"[\pL\pN_]"
files = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in args["files"]) + "]"
query = f"""
WITH lines AS (
    SELECT * FROM read_json({files}, format = 'newline_delimited', ignore_errors = true,
                            columns = {json.dumps(columns).replace('"', "'")})
),
tweets AS (
    SELECT
        try_strptime(created_at, '%a %b %d %H:%M:%S +0000 %Y') AS created,
        place,
        retweeted_status IS NOT NULL AND coalesce(retweeted_status.extended_tweet.full_text,
            retweeted_status.full_text, retweeted_status.text) IS NOT NULL AS retweet,
        CASE WHEN retweeted_status IS NOT NULL AND coalesce(retweeted_status.extended_tweet.full_text,
                retweeted_status.full_text, retweeted_status.text) IS NOT NULL
            THEN coalesce(retweeted_status.extended_tweet.full_text, retweeted_status.full_text,
                          retweeted_status.text)
            ELSE coalesce(extended_tweet.full_text, full_text, text) END AS body,
        CASE WHEN retweeted_status IS NOT NULL AND coalesce(retweeted_status.extended_tweet.full_text,
                retweeted_status.full_text, retweeted_status.text) IS NOT NULL
            THEN CASE WHEN retweeted_status.extended_tweet.full_text IS NOT NULL
                THEN retweeted_status.extended_tweet.entities.hashtags
                ELSE retweeted_status.entities.hashtags END
            ELSE CASE WHEN extended_tweet.full_text IS NOT NULL
                THEN extended_tweet.entities.hashtags ELSE entities.hashtags END END AS tags
    FROM lines
    WHERE coalesce(extended_tweet.full_text, full_text, text) IS NOT NULL
),
matching AS (
    SELECT place, retweet FROM tweets
    WHERE created >= ?::TIMESTAMP AND created < ?::TIMESTAMP
      AND place.country_code = ?
      AND (NOT retweet OR ?)
      AND (regexp_matches(lower(replace(replace(replace(body, '&lt;', '<'), '&gt;', '>'), '&amp;', '&')),
                          '(^|[^{word[1:-1]}])fire([^{word[1:-1]}]|$)')
           OR list_has_any(list_transform(coalesce(tags, []), lambda h: lower(h.text)),
                           ['fire', 'firetruck', 'fireengine']))
)
SELECT
    CASE WHEN place.place_type = 'city'
        THEN CASE WHEN trim(coalesce(place.full_name, '')) = '' THEN '(unnamed place)'
            ELSE place.full_name END
        ELSE NULL END AS city,
    coalesce(place.place_type, '(no type)') AS place_type,
    count(*) AS n
FROM matching
GROUP BY ALL
"""
started = time.perf_counter()
r0 = resource.getrusage(resource.RUSAGE_SELF)
rows = con.execute(
    query,
    [args["from"], args["until"], args["country"], bool(args["retweets"])],
).fetchall()
r1 = resource.getrusage(resource.RUSAGE_SELF)
wall = time.perf_counter() - started
cities = {}
unattributed = {}
for city, place_type, n in rows:
    if city is None:
        unattributed[place_type] = unattributed.get(place_type, 0) + n
    else:
        cities[city] = cities.get(city, 0) + n
print(
    json.dumps(
        {
            "wall_s": wall,
            "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "matching": sum(n for _, _, n in rows),
            "cities": cities,
            "unattributed": unattributed,
            "duckdb": duckdb.__version__,
        }
    )
)
