//! `successCondition` and `failureCondition`: evalexpr expressions over `result`, checked
//! at apply time and evaluated per measurement.

use evalexpr::{ContextWithMutableVariables, HashMapContext, Node, Value};

/// At most this long an expression: bounded parse and evaluation.
pub const MAX_EXPRESSION_LEN: usize = 512;

/// What a measurement read: a number or a boolean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    Number(f64),
    Bool(bool),
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reading::Number(n) => write!(f, "{n}"),
            Reading::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConditionError {
    #[error("longer than {MAX_EXPRESSION_LEN} characters")]
    TooLong,
    #[error("cannot parse: {0}")]
    Parse(String),
    #[error("unknown variable {0:?}: only `result` is defined")]
    Variable(String),
    #[error("assigns a variable: a condition only reads `result`")]
    Assigns,
    #[error("cannot evaluate with result = {value}: {message}")]
    Eval { value: String, message: String },
}

fn parse(expr: &str) -> Result<Node, ConditionError> {
    if expr.len() > MAX_EXPRESSION_LEN {
        return Err(ConditionError::TooLong);
    }
    let node =
        evalexpr::build_operator_tree(expr).map_err(|e| ConditionError::Parse(e.to_string()))?;
    if let Some(v) = node.iter_variable_identifiers().find(|v| *v != "result") {
        return Err(ConditionError::Variable(v.to_string()));
    }
    if node.iter_write_variable_identifiers().next().is_some() {
        return Err(ConditionError::Assigns);
    }
    Ok(node)
}

/// Parses `expr`, checks it reads no variable but `result`, and that it gives a boolean
/// for a number or a boolean `result` (evalexpr finds a missing operand only then).
pub fn check(expr: &str) -> Result<(), ConditionError> {
    parse(expr)?;
    let as_number = eval(expr, Reading::Number(0.0));
    if as_number.is_ok() || eval(expr, Reading::Bool(false)).is_ok() {
        return Ok(());
    }
    Err(match as_number {
        Err(ConditionError::Eval { message, .. }) => ConditionError::Parse(message),
        Err(e) => e,
        Ok(_) => ConditionError::Parse("does not give a boolean".into()),
    })
}

/// `expr` with `result` bound to `reading`; it must give a boolean.
pub fn eval(expr: &str, reading: Reading) -> Result<bool, ConditionError> {
    let node = parse(expr)?;
    let mut ctx = HashMapContext::new();
    let value = match reading {
        Reading::Number(n) => Value::Float(n),
        Reading::Bool(b) => Value::Boolean(b),
    };
    ctx.set_value("result".into(), value)
        .expect("a fresh context takes any value for a new variable");
    node.eval_boolean_with_context(&ctx)
        .map_err(|e| ConditionError::Eval {
            value: reading.to_string(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_should_compare_result_with_integers_and_floats() {
        assert!(eval("result < 0.01", Reading::Number(0.005)).unwrap());
        assert!(!eval("result < 0.01", Reading::Number(0.5)).unwrap());
        assert!(eval("result >= 0.99 && result <= 1", Reading::Number(1.0)).unwrap());
        assert!(eval("result == true", Reading::Bool(true)).unwrap());
    }

    #[test]
    fn a_condition_should_read_only_result() {
        assert_eq!(
            check("rate > 1"),
            Err(ConditionError::Variable("rate".into()))
        );
        assert_eq!(check("result = 1"), Err(ConditionError::Assigns));
        assert!(matches!(check("result <"), Err(ConditionError::Parse(_))));
        assert!(matches!(
            eval("result + 1", Reading::Number(1.0)),
            Err(ConditionError::Eval { .. })
        ));
    }
}
