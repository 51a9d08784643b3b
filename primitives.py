"""
primitives.py -- the embedded benchmark's motion vocabulary: 17 parameterised primitives on the 22-joint skeleton.

Each primitive (walk, run, circle, turn, spin, jump, hop, squat, sit, wave, raise, kick, punch, clap, bow,
balance, stand) has attributes that change the motion (left vs right, direction, speed, count, angle) and
three methods:
    sample(rng)               -> params, e.g. {"side": "left", "count": 2}
    make(params, style, rng)  -> Segment: per-frame joint angles E (n, 22, 3) as (flexion X, abduction Z,
                                 twist Y) in radians, a yaw rate, an airborne lift and push
    phrases(params)           -> [(verb, rest)]: how a caption may say it (captions.py inflects and joins them)
sample_style(rng) draws the per-clip style every primitive reads (neutral posture, tempo, amplitude).
synth.py composes primitives into clips, poses the skeleton and writes the dataset.

Run:  python primitives.py            (each primitive once: its sampled parameters, length and phrases)
"""
from __future__ import annotations

import numpy as np

import common

FPS = 20
J = 22
X, Z, Y = 0, 1, 2                # columns of E: flexion about X, abduction about Z, twist about Y
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 1, 2, 4, 5, 7, 8
SPINE = (3, 6, 9)
NECK, HEAD = 12, 15
L_SH, R_SH, L_EL, R_EL = 16, 17, 18, 19
FOOT_JOINTS = [7, 8, 10, 11]
LIMB = {"left": {"hip": L_HIP, "knee": L_KNEE, "ankle": L_ANKLE, "sh": L_SH, "el": L_EL, "sign": 1.0},
        "right": {"hip": R_HIP, "knee": R_KNEE, "ankle": R_ANKLE, "sh": R_SH, "el": R_EL, "sign": -1.0}}
OTHER = {"left": "right", "right": "left"}
rad = np.radians

# -----------------------------------------------------------------------------
# Joint-angle helpers. Hip, shoulder and elbow flexion is -X, knee and spine flexion +X; abduction
# (outward) is +Z on the left and -Z on the right (LIMB's sign).


def abduct(E, side, joint, deg):
    E[:, joint, Z] += LIMB[side]["sign"] * rad(deg)


def bend(E, side, knee, hip, rows=slice(None)):
    """Flex one leg (radians): the knee by `knee`, the thigh forward by `hip` (hip X is negative forward)."""
    E[rows, LIMB[side]["knee"], X] += knee
    E[rows, LIMB[side]["hip"], X] -= hip


def lean(E, v, axis=X, rows=slice(None)):
    """Add v to each spine joint about axis (X: bend forward, Y: turn)."""
    for j in SPINE:
        E[rows, j, axis] += v


def arms(E, joint, axis, v, rows=slice(None)):
    """Add v to both arms' joint ("sh" or "el") about axis; about Z (abduction) mirrored by side."""
    for side in ("left", "right"):
        E[rows, LIMB[side][joint], axis] += (LIMB[side]["sign"] if axis == Z else 1.0) * v


def flat_foot(E, side, amount=1.0):
    """Ankle angle that keeps the foot parallel to the floor (pelvis upright)."""
    leg = LIMB[side]
    E[:, leg["ankle"], X] = -amount * (E[:, leg["hip"], X] + E[:, leg["knee"], X])


def smoothstep(u):
    return u * u * (3 - 2 * u)


def env(n, rise=0.3, fall=0.3):
    """Smooth 0 -> 1 -> 0 envelope over n frames with rise/fall times in seconds."""
    t = np.arange(n) / FPS
    up = np.clip(t / max(rise, 1e-3), 0, 1)
    down = np.clip((t[-1] - t) / max(fall, 1e-3), 0, 1)
    return smoothstep(np.minimum(up, down))


def bumps(n, count, width=0.5):
    """`count` smooth bumps 0 -> 1 -> 0 evenly spaced over n frames; width = fraction of each slot."""
    out = np.zeros(n)
    slot = n / count
    for k in range(count):
        a, b = int(k * slot + slot * (1 - width) / 2), int(k * slot + slot * (1 + width) / 2)
        if b > a:
            out[a:b] = np.sin(np.linspace(0, np.pi, b - a)) ** 2
    return out


def arc(n, height):
    """A ballistic lift over n frames: 0 -> height -> 0, a parabola."""
    u = np.linspace(0, 1, n)
    return 4 * height * u * (1 - u)


class Segment:
    """What a primitive returns: joint angles E (n, 22, 3), yaw rate (rad/frame), airborne lift (m),
    and a push (m/s, body frame) used only while airborne."""

    def __init__(self, n, style):
        self.n = n
        self.E = np.repeat(style["neutral"][None], n, 0).copy()
        self.yaw_rate = np.zeros(n)
        self.lift = np.zeros(n)
        self.push = np.zeros((n, 2))


# -----------------------------------------------------------------------------
# The primitives. Each: sample(rng) -> params, make(params, style, rng) -> Segment,
# phrases(params) -> [(verb, rest)] where rest may hold {pos} and <verb> placeholders.

COUNT_ADV = {1: ["", "once"], 2: ["twice", "two times"], 3: ["three times"]}
COUNT_NUM = {1: "a", 2: "two", 3: "three"}
SPEED_ADV = {"slow": ["slowly", "at a slow pace"], "normal": [""], "fast": ["quickly", "fast", "briskly"]}


def _seconds(rng, lo, hi, style):
    return int(round(rng.uniform(lo, hi) * style["tempo"] * FPS))


def gait(seg, f, hip_amp, knee_amp, arm_amp, elbow, lean_deg, t0=0.0):
    """Walking / running legs and arms; phase of the left leg = 2 pi f t."""
    t = np.arange(seg.n) / FPS + t0
    phi = 2 * np.pi * f * t
    for side, shift in (("left", 0.0), ("right", np.pi)):
        leg, ph = LIMB[side], phi + shift
        bend(seg.E, side, rad(5 + knee_amp * np.clip(np.cos(ph), 0, 1) ** 1.5), rad(hip_amp) * np.sin(ph))
        flat_foot(seg.E, side, 0.6)
        seg.E[:, leg["sh"], X] += rad(arm_amp) * np.sin(ph)                       # arm swings opposite
        seg.E[:, leg["el"], X] += -rad(elbow)
    lean(seg.E, rad(lean_deg / 3))


class Walk:
    name, weight = "walk", 3.0

    def sample(self, rng):
        return {"dir": rng.choice(["forward", "forward", "backward", "left", "right"]),
                "speed": rng.choice(["slow", "normal", "normal", "fast"])}

    def make(self, p, style, rng):
        f = {"slow": 0.65, "normal": 0.9, "fast": 1.15}[p["speed"]] / style["tempo"]
        amp = {"slow": 16, "normal": 24, "fast": 30}[p["speed"]] * style["amp"]
        seg = Segment(_seconds(rng, 1.6, 3.2, style), style)
        if p["dir"] in ("forward", "backward"):
            gait(seg, f, amp, 40 + amp, 0.6 * amp, 15, 3, rng.uniform(0, 1 / f))
            if p["dir"] == "backward":
                seg.E = seg.E[::-1].copy()                                       # the cycle played backwards
        else:                                                                    # side steps towards p["dir"]
            lead, trail = p["dir"], OTHER[p["dir"]]
            t = np.arange(seg.n) / FPS
            a = rad(0.5 * amp) * (1 - np.cos(2 * np.pi * f * t)) / 2            # both hips open, then close
            lift = np.sin(2 * np.pi * f * t)
            abduct(seg.E, lead, LIMB[lead]["hip"], np.degrees(a))
            abduct(seg.E, trail, LIMB[trail]["hip"], np.degrees(a))
            seg.E[:, LIMB[lead]["knee"], X] += rad(35) * np.clip(lift, 0, 1)
            seg.E[:, LIMB[trail]["knee"], X] += rad(35) * np.clip(-lift, 0, 1)
            for side in ("left", "right"):
                seg.E[:, LIMB[side]["hip"], X] += -0.5 * seg.E[:, LIMB[side]["knee"], X]
                flat_foot(seg.E, side)
        return seg

    def phrases(self, p):
        adv = SPEED_ADV[p["speed"]]
        if p["dir"] == "forward":
            out = [("walk", f"forward {a}") for a in adv] + [("walk", f"{a} forward") for a in adv] + \
                  [("walk", f"straight ahead {adv[0]}"), ("take", f"a few steps forward {adv[-1]}")]
            out += [("stroll", "forward")] if p["speed"] == "slow" else []
            out += [("hurry", "forward")] if p["speed"] == "fast" else []
            return out
        if p["dir"] == "backward":
            return [("walk", f"backward {a}") for a in adv] + [("walk", f"backwards {adv[-1]}"),
                    ("step", f"back {adv[0]}"), ("take", f"a few steps backward {adv[-1]}"),
                    ("move", f"backwards {adv[0]}")]
        d = p["dir"]
        return [("walk", f"to the {d} {adv[0]}"), ("sidestep", f"to the {d} {adv[-1]}"),
                ("step", f"sideways to the {d}"), ("shuffle", f"to the {d}"), ("move", f"sideways to the {d}")]


class Run:
    name, weight = "run", 1.5

    def sample(self, rng):
        return {"speed": rng.choice(["jog", "run", "sprint"])}

    def make(self, p, style, rng):
        f = {"jog": 1.25, "run": 1.4, "sprint": 1.6}[p["speed"]] / style["tempo"]
        amp = {"jog": 28, "run": 35, "sprint": 42}[p["speed"]] * style["amp"]
        seg = Segment(_seconds(rng, 1.4, 2.8, style), style)
        gait(seg, f, amp, 60 + amp, 1.1 * amp, 80, 8 + amp / 4, rng.uniform(0, 1 / f))
        t = np.arange(seg.n) / FPS
        seg.lift = 0.04 * amp / 30 * np.clip(-np.cos(4 * np.pi * f * t), 0, 1) ** 2 * env(seg.n, 0.4, 0.3)
        return seg

    def phrases(self, p):
        return {"jog": [("jog", "forward"), ("jog", ""), ("run", "slowly forward"), ("jog", "ahead")],
                "run": [("run", "forward"), ("run", ""), ("run", "ahead"), ("run", "straight forward")],
                "sprint": [("sprint", "forward"), ("run", "forward fast"), ("run", "quickly forward"),
                           ("dash", "forward")]}[p["speed"]]


class Circle:
    name, weight = "circle", 1.0

    def sample(self, rng):
        return {"dir": rng.choice(["clockwise", "counterclockwise"])}

    def make(self, p, style, rng):
        seg = Segment(_seconds(rng, 3.2, 4.4, style), style)
        gait(seg, 0.95 / style["tempo"], 22 * style["amp"], 60, 13, 15, 3)
        sign = -1.0 if p["dir"] == "clockwise" else 1.0                         # clockwise = turning right
        seg.yaw_rate[:] = sign * 2 * np.pi * rng.uniform(0.8, 1.0) / seg.n
        return seg

    def phrases(self, p):
        d = p["dir"]
        return [("walk", f"in a circle {d}"), ("walk", f"{d} in a circle"), ("walk", f"around in a {d} circle"),
                ("walk", f"in a {d} circle")]


def stepping(seg, f=1.3, knee=30):
    """Small alternating knee lifts: stepping in place while turning."""
    t = np.arange(seg.n) / FPS
    w = env(seg.n, 0.2, 0.2)
    for side, shift in (("left", 0.0), ("right", np.pi)):
        k = rad(knee) * np.clip(np.sin(2 * np.pi * f * t + shift), 0, 1) * w
        bend(seg.E, side, k, 0.6 * k)
        flat_foot(seg.E, side)


class Turn:
    name, weight = "turn", 1.5

    def sample(self, rng):
        return {"side": rng.choice(["left", "right"]), "angle": int(rng.choice([90, 180]))}

    def make(self, p, style, rng):
        seg = Segment(_seconds(rng, 1.0, 1.6, style) + (8 if p["angle"] == 180 else 0), style)
        sign = 1.0 if p["side"] == "left" else -1.0                              # + yaw turns towards +X (left)
        w = env(seg.n, 0.45, 0.45)
        seg.yaw_rate = sign * rad(p["angle"]) * w / w.sum()
        stepping(seg)
        return seg

    def phrases(self, p):
        s = p["side"]
        if p["angle"] == 90:
            return [("turn", s), ("turn", f"to the {s}"), ("turn", f"to {{pos}} {s}"), ("make", f"a {s} turn"),
                    ("rotate", f"to the {s}"), ("turn", f"ninety degrees to the {s}")]
        return [("turn", "around"), ("turn", "all the way around"), ("turn", f"around to the {s}"),
                ("make", "a half turn"), ("turn", "to face the other way"), ("turn", "back the other way")]


class Spin:
    name, weight = "spin", 0.7

    def sample(self, rng):
        return {"side": rng.choice(["left", "right"])}

    def make(self, p, style, rng):
        seg = Segment(_seconds(rng, 1.4, 2.0, style), style)
        w = env(seg.n, 0.3, 0.3)
        seg.yaw_rate = (1.0 if p["side"] == "left" else -1.0) * 2 * np.pi * w / w.sum()
        stepping(seg, 1.8, 25)
        arms(seg.E, "sh", Z, rad(35 * w))
        return seg

    def phrases(self, p):
        s = p["side"]
        return [("spin", "around"), ("spin", f"around to the {s}"), ("spin", "in a full circle"),
                ("turn", f"a full circle to the {s}"), ("do", "a full turn"), ("spin", f"once to the {s}")]


def crouch_extend(seg, a, b, depth):
    """Knees and hips bend to `depth` over frames [a, b) and straighten again (feet flat)."""
    n = b - a
    if n <= 1:
        return
    w = np.zeros(seg.n)
    w[a:b] = np.sin(np.linspace(0, np.pi, n)) ** 2
    for side in ("left", "right"):
        bend(seg.E, side, rad(depth) * w, rad(0.8 * depth) * w)
        flat_foot(seg.E, side)
    lean(seg.E, rad(depth / 9) * w)


class Jump:
    name, weight = "jump", 1.5

    def sample(self, rng):
        return {"count": int(rng.choice([1, 2, 3])), "forward": bool(rng.random() < 0.4)}

    def make(self, p, style, rng):
        per = _seconds(rng, 0.9, 1.15, style)
        seg = Segment(per * p["count"] + 4, style)
        height = rng.uniform(0.18, 0.32) * style["amp"]
        for k in range(p["count"]):
            a = 2 + k * per
            crouch_extend(seg, a, a + int(0.45 * per), 55 * style["amp"])       # take-off crouch
            fa, fb = a + int(0.42 * per), a + int(0.72 * per)                    # flight
            seg.lift[fa:fb] = arc(fb - fa, height)
            crouch_extend(seg, fb - 1, min(a + per + 2, seg.n), 40 * style["amp"])  # landing
            arm = np.zeros(seg.n)
            arm[a:a + per] = np.sin(np.linspace(0, 2 * np.pi, per))
            arms(seg.E, "sh", X, rad(50) * arm)                                  # arms back, then up
            if p["forward"]:
                seg.push[fa:fb, 1] = rng.uniform(1.1, 1.7)
        return seg

    def phrases(self, p):
        c, adv = p["count"], COUNT_ADV[p["count"]]
        jumps = "jump" if c == 1 else "jumps"
        if p["forward"]:
            return [("jump", f"forward {a}") for a in adv] + [("leap", f"forward {adv[-1]}"),
                    ("jump", f"ahead {adv[0]}"), ("do", f"{COUNT_NUM[c]} forward {jumps}")]
        return [("jump", f"{a}") for a in adv] + [("jump", f"up and down {adv[-1]}"),
                ("jump", f"in place {adv[0]}"), ("do", f"{COUNT_NUM[c]} {jumps} in place")]


class Hop:
    name, weight = "hop", 0.7

    def sample(self, rng):
        return {"side": rng.choice(["left", "right"]), "count": int(rng.choice([2, 3]))}

    def make(self, p, style, rng):
        per = _seconds(rng, 0.5, 0.65, style)
        seg = Segment(per * p["count"] + 16, style)
        w = env(seg.n, 0.35, 0.35)
        bend(seg.E, OTHER[p["side"]], rad(75) * w, rad(25) * w)
        arms(seg.E, "sh", Z, rad(30 * w))
        for k in range(p["count"]):
            a = 8 + k * per
            flex = np.zeros(seg.n)
            flex[a:a + per] = np.sin(np.linspace(0, 2 * np.pi, per)) ** 2
            bend(seg.E, p["side"], rad(25) * flex, rad(20) * flex)
            fa, fb = a + int(0.35 * per), a + int(0.7 * per)
            seg.lift[fa:fb] = arc(fb - fa, 0.09)
        flat_foot(seg.E, p["side"])
        return seg

    def phrases(self, p):
        s, adv = p["side"], COUNT_ADV[p["count"]]
        return [("hop", f"on {{pos}} {s} leg {adv[0]}"), ("hop", f"on the {s} foot {adv[-1]}"),
                ("hop", f"{adv[0]} on {{pos}} {s} foot"), ("jump", f"on {{pos}} {s} leg {adv[-1]}")]


class Squat:
    name, weight = "squat", 1.2

    def sample(self, rng):
        return {"count": int(rng.choice([1, 2, 3]))}

    def make(self, p, style, rng):
        per = _seconds(rng, 1.1, 1.6, style)
        seg = Segment(per * p["count"] + 4, style)
        depth = rng.uniform(85, 110) * style["amp"]
        for k in range(p["count"]):
            a = 2 + k * per
            crouch_extend(seg, a, a + per, depth)
        w = bumps(seg.n, p["count"], 0.9)
        arms(seg.E, "sh", X, -rad(70) * w)                                      # arms forward for balance
        return seg

    def phrases(self, p):
        c, adv = p["count"], COUNT_ADV[p["count"]]
        squats = "squat" if c == 1 else "squats"
        return [("squat", f"down {a}") for a in adv] + [("squat", f"{adv[-1]}"), ("crouch", f"down {adv[0]}"),
                ("do", f"{COUNT_NUM[c]} {squats}")]


class Sit:
    name, weight = "sit", 1.0

    def sample(self, rng):
        return {"stand_up": bool(rng.random() < 0.5)}

    def make(self, p, style, rng):
        down = _seconds(rng, 1.3, 1.8, style)
        hold = _seconds(rng, 0.6, 1.4, style)
        up = _seconds(rng, 1.2, 1.6, style) if p["stand_up"] else 0
        seg = Segment(down + hold + up, style)
        depth = np.concatenate([smoothstep(np.linspace(0, 1, down)), np.ones(hold), smoothstep(np.linspace(1, 0, up))])
        forward = np.concatenate([np.sin(np.linspace(0, np.pi, down)), np.zeros(hold), np.sin(np.linspace(0, np.pi, up))])
        for side in ("left", "right"):
            bend(seg.E, side, rad(88) * depth, rad(88) * depth)
            flat_foot(seg.E, side)
            seg.E[:, LIMB[side]["sh"], X] += -rad(30) * depth
            seg.E[:, LIMB[side]["el"], X] += -rad(50) * depth
        lean(seg.E, rad(10) * forward + rad(2) * depth)
        return seg

    def phrases(self, p):
        if p["stand_up"]:
            return [("sit", "down and <stand> back up"), ("sit", "down then <stand> up again"),
                    ("sit", "on a chair and <get> up"), ("take", "a seat and <stand> up")]
        return [("sit", "down"), ("sit", "down on a chair"), ("take", "a seat"), ("sit", "down on something")]


def arm_up(seg, side, w, how):
    """Raise one arm: 'up' overhead, 'forward' to shoulder height in front, 'side' out to the side."""
    if how == "up":
        seg.E[:, LIMB[side]["sh"], X] += -rad(165) * w
    elif how == "forward":
        seg.E[:, LIMB[side]["sh"], X] += -rad(88) * w
    else:
        seg.E[:, LIMB[side]["sh"], Z] += LIMB[side]["sign"] * rad(85) * w
    seg.E[:, LIMB[side]["el"], X] *= 1 - w                                       # straighten the elbow


class Wave:
    name, weight = "wave", 1.5

    def sample(self, rng):
        return {"side": rng.choice(["left", "right", "left", "right", "both"])}

    def make(self, p, style, rng, n=None):
        seg = Segment(n or _seconds(rng, 1.8, 3.0, style), style)
        w = env(seg.n, 0.45, 0.45)
        t = np.arange(seg.n) / FPS
        osc = np.sin(2 * np.pi * rng.uniform(1.6, 2.4) * t) * w
        for side in (["left", "right"] if p["side"] == "both" else [p["side"]]):
            sh, el, sign = LIMB[side]["sh"], LIMB[side]["el"], LIMB[side]["sign"]
            seg.E[:, sh, Z] += sign * rad(140) * w
            seg.E[:, el, X] += -rad(35) * w
            seg.E[:, el, Z] += sign * rad(30) * osc                              # the hand waves side to side
            seg.E[:, sh, Z] += sign * rad(8) * osc
        return seg

    def phrases(self, p):
        if p["side"] == "both":
            return [("wave", "both hands"), ("wave", "with both arms"), ("wave", "both arms in the air"),
                    ("raise", "both hands and <wave>")]
        s = p["side"]
        return [("wave", f"{{pos}} {s} hand"), ("wave", f"with {{pos}} {s} hand"), ("wave", f"with {{pos}} {s} arm"),
                ("raise", f"{{pos}} {s} hand and <wave>"), ("wave", f"hello with {{pos}} {s} hand")]


class Raise:
    name, weight = "raise", 1.3

    def sample(self, rng):
        return {"side": rng.choice(["left", "right", "both"]), "how": rng.choice(["up", "up", "forward", "side"])}

    def make(self, p, style, rng, n=None):
        seg = Segment(n or _seconds(rng, 1.6, 2.8, style), style)
        w = env(seg.n, 0.5, 0.5)
        for side in (["left", "right"] if p["side"] == "both" else [p["side"]]):
            arm_up(seg, side, w, p["how"])
        return seg

    def phrases(self, p):
        s, how = p["side"], p["how"]
        if p["side"] == "both":
            return {"up": [("raise", "both arms up"), ("raise", "both hands above {pos} head"), ("put", "{pos} hands up"),
                           ("lift", "both arms into the air")],
                    "forward": [("hold", "both arms out in front"), ("raise", "both arms forward"),
                                ("stretch", "both arms out in front")],
                    "side": [("hold", "{pos} arms out to the sides"), ("spread", "{pos} arms wide"),
                             ("raise", "both arms out to the sides")]}[how]
        return {"up": [("raise", f"{{pos}} {s} arm above {{pos}} head"), ("raise", f"{{pos}} {s} hand up"),
                       ("lift", f"{{pos}} {s} arm up high"), ("put", f"{{pos}} {s} hand up")],
                "forward": [("raise", f"{{pos}} {s} arm forward"), ("hold", f"{{pos}} {s} arm out in front"),
                            ("stretch", f"{{pos}} {s} arm forward")],
                "side": [("raise", f"{{pos}} {s} arm to the side"), ("hold", f"{{pos}} {s} arm out to the side"),
                         ("lift", f"{{pos}} {s} arm out sideways")]}[how]


class Kick:
    name, weight = "kick", 1.3

    def sample(self, rng):
        return {"side": rng.choice(["left", "right"]), "count": int(rng.choice([1, 1, 2]))}

    def make(self, p, style, rng):
        per = _seconds(rng, 1.0, 1.3, style)
        seg = Segment(per * p["count"] + 4, style)
        height = rng.uniform(55, 80) * style["amp"]
        for k in range(p["count"]):
            a = 2 + k * per
            u = np.linspace(0, 1, per)
            hip = np.sin(np.pi * u) ** 2                                          # leg up, highest at u = 0.5
            knee = np.where(u < 0.5, 70 * np.sin(2 * np.pi * u) ** 2,            # chamber, snap straight at
                            30 * np.sin(2 * np.pi * (u - 0.5)) ** 2)              # the top, recoil
            bend(seg.E, p["side"], rad(knee), rad(height) * hip, slice(a, a + per))
            lean(seg.E, -rad(4) * hip, X, slice(a, a + per))
            arms(seg.E, "sh", Z, rad(25) * hip, slice(a, a + per))
        flat_foot(seg.E, OTHER[p["side"]])
        return seg

    def phrases(self, p):
        s, c, adv = p["side"], p["count"], COUNT_ADV[p["count"]]
        kicks = "kick" if c == 1 else "kicks"
        return [("kick", f"with {{pos}} {s} leg {adv[0]}"), ("kick", f"{{pos}} {s} foot forward {adv[-1]}"),
                ("kick", f"forward with the {s} leg {adv[-1]}"), ("do", f"{COUNT_NUM[c]} {s} {kicks}")]


class Punch:
    name, weight = "punch", 1.2

    def sample(self, rng):
        return {"side": rng.choice(["left", "right"]), "count": int(rng.choice([1, 2, 3]))}

    def make(self, p, style, rng):
        per = _seconds(rng, 0.55, 0.8, style)
        seg = Segment(per * p["count"] + 16, style)
        guard = env(seg.n, 0.35, 0.35)
        arms(seg.E, "sh", X, -rad(35) * guard)
        arms(seg.E, "el", X, -rad(100) * guard)
        arm = LIMB[p["side"]]
        for k in range(p["count"]):
            a = 8 + k * per
            hit = np.sin(np.linspace(0, np.pi, per)) ** 2
            seg.E[a:a + per, arm["sh"], X] += -rad(50) * hit
            seg.E[a:a + per, arm["el"], X] += rad(95) * hit                        # elbow snaps straight
            lean(seg.E, -arm["sign"] * rad(6) * hit, Y, slice(a, a + per))      # torso turns into it
        return seg

    def phrases(self, p):
        s, c, adv = p["side"], p["count"], COUNT_ADV[p["count"]]
        punches = "punch" if c == 1 else "punches"
        return [("punch", f"with {{pos}} {s} hand {adv[0]}"), ("punch", f"forward with {{pos}} {s} fist {adv[-1]}"),
                ("throw", f"{COUNT_NUM[c]} {punches} with {{pos}} {s} arm"), ("jab", f"with the {s} hand {adv[-1]}")]


class Clap:
    name, weight = "clap", 1.0

    def sample(self, rng):
        return {"count": int(rng.choice([1, 2, 3]))}

    def make(self, p, style, rng):
        per = _seconds(rng, 0.45, 0.6, style)
        seg = Segment(per * p["count"] + 20, style)
        w = env(seg.n, 0.45, 0.45)
        close = np.zeros(seg.n)
        for k in range(p["count"]):
            a = 10 + k * per
            close[a:a + per] = np.sin(np.linspace(0, np.pi, per)) ** 2
        arms(seg.E, "sh", X, -rad(70) * w)
        arms(seg.E, "el", X, -rad(40) * w)
        arms(seg.E, "sh", Z, rad(30 - 38 * close) * w)
        return seg

    def phrases(self, p):
        adv = COUNT_ADV[p["count"]]
        return [("clap", f"{{pos}} hands {a}") for a in adv] + [("clap", f"{adv[-1]}"),
                ("clap", f"{{pos}} hands together {adv[0]}")]


class Bow:
    name, weight = "bow", 0.8

    def sample(self, rng):
        return {}

    def make(self, p, style, rng):
        seg = Segment(_seconds(rng, 1.8, 2.6, style), style)
        w = env(seg.n, 0.7, 0.7)
        depth = rng.uniform(50, 75) * style["amp"]
        lean(seg.E, rad(depth / 3) * w)
        arms(seg.E, "sh", X, -rad(0.8 * depth) * w)                             # arms keep hanging
        return seg

    def phrases(self, p):
        return [("bow", ""), ("bow", "down"), ("bend", "forward at the waist"), ("take", "a bow"), ("bow", "forward")]


class Balance:
    name, weight = "balance", 0.7

    def sample(self, rng):
        return {"side": rng.choice(["left", "right"])}

    def make(self, p, style, rng):
        seg = Segment(_seconds(rng, 2.0, 3.0, style), style)
        w = env(seg.n, 0.6, 0.6)
        bend(seg.E, OTHER[p["side"]], rad(90) * w, rad(rng.uniform(70, 90)) * w)
        arms(seg.E, "sh", Z, rad(75 * w))
        flat_foot(seg.E, p["side"])
        return seg

    def phrases(self, p):
        s, o = p["side"], OTHER[p["side"]]
        return [("balance", f"on {{pos}} {s} leg"), ("stand", f"on {{pos}} {s} foot"),
                ("lift", f"{{pos}} {o} knee and <balance>"), ("balance", f"on the {s} leg with arms out")]


class Stand:
    name, weight = "stand", 0.6

    def sample(self, rng):
        return {}

    def make(self, p, style, rng, n=None):
        seg = Segment(n or _seconds(rng, 1.0, 2.0, style), style)
        t = np.arange(seg.n) / FPS
        lean(seg.E, rad(1.5) * np.sin(2 * np.pi * 0.4 * t))
        return seg

    def phrases(self, p):
        return [("stand", "still"), ("stand", "in place"), ("wait", ""), ("stand", "there"), ("stay", "still")]


PRIMITIVES = [Walk(), Run(), Circle(), Turn(), Spin(), Jump(), Hop(), Squat(), Sit(), Wave(), Raise(), Kick(),
              Punch(), Clap(), Bow(), Balance(), Stand()]
BY_NAME = {p.name: p for p in PRIMITIVES}
LOCOMOTION = ("walk", "circle")   # segments that can carry an upper-body overlay ("walks while waving")


def sample_style(rng):
    neutral = np.zeros((J, 3))
    for side in ("left", "right"):
        neutral[LIMB[side]["sh"], Z] = LIMB[side]["sign"] * rad(rng.uniform(4, 12))
        neutral[LIMB[side]["el"], X] = -rad(rng.uniform(8, 22))
    for j in SPINE:
        neutral[j, X] = rad(rng.uniform(-2, 3))
    neutral[NECK, X] = rad(rng.uniform(-5, 8))
    return {"neutral": neutral, "tempo": rng.uniform(0.85, 1.15), "amp": rng.uniform(0.85, 1.15)}


def main():
    """Each primitive once, with --seed: its sampled parameters, its length in frames and its phrases."""
    import argparse
    p = argparse.ArgumentParser(description="list the benchmark's motion primitives")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    common.check_ranges(a, seed=common.SEED)
    rng = np.random.default_rng(a.seed)
    style = sample_style(rng)
    for prim in PRIMITIVES:
        params = prim.sample(rng)
        seg = prim.make(params, style, rng)
        print(f"{prim.name:<8} weight {prim.weight:<4} {seg.n:>3} frames  " + ", ".join(f"{k}={v}" for k, v in params.items()))
        for verb, rest in prim.phrases(params):
            print(f"    {verb} {rest}")


if __name__ == "__main__":
    common.cli(main)
