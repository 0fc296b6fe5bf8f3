from trace_core.search_agent.reward import exact_match, f1_score, normalize_answer


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The  Telmar-Group, Inc. ") == "telmargroup inc"
    assert normalize_answer("An apple a day") == "apple day"


def test_exact_match_accepts_any_of_the_gold_answers():
    gold = ["New Varno", "Varno City"]
    assert exact_match("varno city", gold) == 1.0
    assert exact_match("the New Varno.", gold) == 1.0
    assert exact_match("Varno", gold) == 0.0


def test_exact_match_is_not_fooled_by_article_inside_a_word():
    assert exact_match("Theodor", ["odor"]) == 0.0


def test_f1_gives_partial_credit_for_token_overlap():
    # pred tokens [new, varno, city], gold [new, varno]: overlap 2, P = 2/3, R = 1, F1 = 0.8
    assert abs(f1_score("New Varno City", ["New Varno"]) - 0.8) < 1e-9
    assert f1_score("Korvath", ["New Varno", "Korvath"]) == 1.0
    assert f1_score("", ["Varno"]) == 0.0
