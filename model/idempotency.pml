/*
 * idempotency.pml - the idempotence claim/complete/release/renew protocol, for SPIN.
 *
 * N invocations of ONE key (same fingerprint) race over ONE store record. Every store
 * operation is one atomic step, as the real stores make it (one Lua script, one SQL
 * statement, one conditional DynamoDB write). Time is abstract: instead of clocks the
 * environment fires two kinds of events at any moment:
 *   - "lease lapses": only while the record is IN_PROGRESS with a live lease, i.e. while
 *     its holder is claimed-but-not-started, running, paused, or crashed;
 *   - "retention ends": for a COMPLETED record (ttl passed), or for an IN_PROGRESS record
 *     whose lease already lapsed (expires_at >= lease_expires_at always holds).
 * Any invocation may crash at any point (before the claim, before the body, in the body,
 * between the body and complete); the body may succeed (complete) or raise (release).
 *
 * Properties (assertions, checked exhaustively with ./pan):
 *   (a) at most one live owner: when a claim is granted no other invocation holds a
 *       claim whose lease has not lapsed, and a granted claim never replaces a kept result;
 *   (b) a completed result is never overwritten before its retention ends, and every
 *       replay returns the first kept result of the current retention period;
 *   (c) a zombie (an invocation whose lease lapsed and was taken over) never completes
 *       or releases over its successor: every successful complete/release/renew comes
 *       from the last invocation that acquired the key;
 *   (d) the body runs more than once only with an excuse: executions <= 1 + lease
 *       lapses + releases (the body raised) + retention ends.
 *
 * Variants (each must make ./pan report errors, so the properties are not vacuous):
 *   -DUNFENCED     complete/release ignore the fence (what Powertools' save_success and
 *                  delete_record do): a zombie overwrites its successor -> (c) fails.
 *   -DRACY_CLAIM   claim = read, then write (two steps, no condition on the write)
 *                  -> (a) fails.
 *   -DRESET_FENCE  release deletes the record, so the next claim restarts at fence 1:
 *                  the zombie's stale fence becomes valid again (ABA) -> (c) fails.
 *   -DPURGE        an expired record whose lease is over too is physically deleted
 *                  (SQLite/PostgreSQL purge(), DynamoDB/Redis TTL deletion), which resets
 *                  the fence the same way -> (c) fails. Add -DCLOCK_FENCE (a new record's
 *                  fence is drawn from a clock that never goes back, instead of 1) and
 *                  the properties hold again.
 */

#ifndef N
#define N 3
#endif
#ifndef MAXLAPSE
#define MAXLAPSE 4     /* lease lapses the environment may cause (bounds the state space) */
#endif
#ifndef MAXEXPIRE
#define MAXEXPIRE 2    /* retention ends of completed records */
#endif
#define NOBODY 255

mtype = { NONE, IN_PROGRESS, COMPLETED };

/* ---- the store record ------------------------------------------------------------ */
mtype st = NONE;       /* NONE: no record (never created, or physically deleted) */
byte fence = 0;        /* grows on every granted claim */
bool lapsed = false;   /* IN_PROGRESS and now >= lease_expires_at */
bool expired = false;  /* now >= expires_at: reads as absent (retention ended / released) */
byte result = 0;       /* 0: none; i+1: written by invocation i */

/* ---- ghost state (observers only, never read by the protocol) -------------------- */
byte holder = NOBODY;  /* the invocation that acquired the key last */
bool live[N];          /* invocation i holds a claim whose lease has not lapsed */
byte execs = 0;        /* bodies started */
byte excuses = 0;      /* lapses + releases + retention ends */
byte lapses = 0;
byte expiries = 0;
byte committed = 0;    /* first result kept in the current retention period */
byte clockfence = 0;   /* CLOCK_FENCE: a clock that only moves forward */

inline no_other_live(me) {
    i = 0;
    do
    :: i < N -> assert(i == me || !live[i]); i++
    :: else -> break
    od
}

/* The write half of a granted claim: create, or take over with fence + 1. */
inline grant(me) {
    assert(!(st == COMPLETED && !expired));                 /* (a)/(b) */
    no_other_live(me);                                       /* (a) */
#ifdef CLOCK_FENCE
    if
    :: st == NONE -> clockfence++; fence = clockfence        /* a fresh record */
    :: else -> fence++
    fi;
    if :: fence > clockfence -> clockfence = fence :: else -> skip fi;
#else
    fence++;                                                 /* NONE has fence 0: 1 */
#endif
    if :: st == COMPLETED -> committed = 0 :: else -> skip fi;      /* a new retention period */
    st = IN_PROGRESS; lapsed = false; expired = false; result = 0;
    holder = me; live[me] = true;
    acquired = true; my = fence
}

#define CLAIMABLE (st == NONE || expired || (st == IN_PROGRESS && lapsed))

/* claim: create / take over (retention ended, or lease lapsed with the same fingerprint)
   / else return the existing record - in ONE atomic step (-DRACY_CLAIM: two). */
inline claim(me) {
#ifdef RACY_CLAIM
    atomic { seen = st; seenres = result; canclaim = CLAIMABLE };
    if
    :: canclaim -> atomic { grant(me) }
    :: else -> acquired = false; assert(seen != COMPLETED || seenres == committed)
    fi
#else
    atomic {
        seen = st; seenres = result;
        if
        :: CLAIMABLE -> grant(me)
        :: else -> acquired = false;
            assert(st != COMPLETED || result == committed)   /* (b): the replayed value */
        fi
    }
#endif
}

/* the fence condition shared by complete, release and renew */
#ifdef UNFENCED
#define OWNED(f) (st != NONE)
#else
#define OWNED(f) (st == IN_PROGRESS && fence == (f) && !expired)
#endif

inline complete(me) {
    atomic {
        if
        :: OWNED(my) ->
            assert(holder == me);                            /* (c) */
            assert(!(st == COMPLETED && !expired));          /* (b) */
            st = COMPLETED; result = me + 1; expired = false; lapsed = false;
            if :: committed == 0 -> committed = result :: else -> skip fi;
            done = true
        :: else -> done = false                              /* LeaseLostError */
        fi;
        live[me] = false
    }
}

inline release(me) {
    atomic {
        if
        :: OWNED(my) ->
            assert(holder == me);                            /* (c) */
            assert(!(st == COMPLETED && !expired));          /* (b) */
            excuses++;
#if defined(RESET_FENCE)
            st = NONE; fence = 0; lapsed = false; expired = false; result = 0
#else
            expired = true
#endif
        :: else -> skip
        fi;
        live[me] = false
    }
}

inline renew(me) {
    atomic {
        if
        :: OWNED(my) && st == IN_PROGRESS ->
            assert(holder == me);                            /* (c) */
            lapsed = false; live[me] = true
        :: else -> skip
        fi
    }
}

proctype Invocation(byte me) {
    bool acquired = false, done = false, canclaim = false;
    mtype seen = NONE;
    byte seenres = 0, my = 0, i = 0;

    if :: goto crash :: skip fi;                            /* crash before the claim */
retry:
    claim(me);
    if
    :: acquired -> skip
    :: !acquired && seen == COMPLETED -> goto finished      /* replay (checked in claim) */
    :: !acquired && seen != COMPLETED ->                     /* in progress elsewhere */
        if
        :: goto retry                                        /* on_in_progress="wait" */
        :: goto finished                                     /* AlreadyInProgressError */
        fi
    fi;
    if :: goto crash :: skip fi;                            /* crash before the body */
    atomic { assert(execs <= excuses); execs++ }             /* (d): the side effect */
    do                                                       /* the body runs / pauses */
    :: true -> renew(me)                                       /* heartbeat */
    :: break
    :: goto crash                                            /* crash in the body */
    od;
    if
    :: true -> complete(me)                                    /* the body returned */
    :: true -> release(me)                                     /* the body raised */
    :: goto crash                                            /* crash before complete */
    fi;
finished:
    live[me] = false;
    goto stop;
crash:
    live[me] = false;                                        /* the lease stays in the store */
stop:
    skip
}

/* Time: leases lapse, retention ends (and, with -DPURGE, expired rows are deleted). */
active proctype Environment() {
end:
    do
    :: atomic {
        st == IN_PROGRESS && !lapsed && !expired && lapses < MAXLAPSE ->
            lapsed = true; lapses++; excuses++;
            if :: holder != NOBODY -> live[holder] = false :: else -> skip fi
       }
    :: atomic { st == COMPLETED && !expired && expiries < MAXEXPIRE ->
            expired = true; expiries++; excuses++ }
    :: atomic { st == IN_PROGRESS && lapsed && !expired -> expired = true }
#ifdef PURGE
    :: atomic { st == IN_PROGRESS && expired && !lapsed -> lapsed = true }  /* released; its lease ends */
    :: atomic { expired && (st == COMPLETED || lapsed) ->                   /* purge() / TTL */
            st = NONE; fence = 0; lapsed = false; expired = false; result = 0; committed = 0 }
#endif
    od
}

init {
    byte k = 0;
    atomic {
        do
        :: k < N -> run Invocation(k); k++
        :: else -> break
        od
    }
}
